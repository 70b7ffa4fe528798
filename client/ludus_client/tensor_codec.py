"""Conversion between numpy arrays and the wire `Tensor` (dtype, shape, raw little-endian bytes).

One implementation of the wire format, used by the SDK and by the service, so both sides agree on
byte order and validation. Decoding never trusts the sender: the byte length must equal
product(shape) * itemsize, and errors name the field they were found in.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ludus.v1 import trainer_pb2 as pb

_TO_NUMPY = {
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    pb.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
    pb.DATA_TYPE_INT32: np.dtype("<i4"),
    pb.DATA_TYPE_INT64: np.dtype("<i8"),
    pb.DATA_TYPE_BOOL: np.dtype("u1"),  # decoded as bytes, then viewed as bool below
}
_FROM_NUMPY = {
    np.dtype("float32"): pb.DATA_TYPE_FLOAT32,
    np.dtype("float64"): pb.DATA_TYPE_FLOAT64,
    np.dtype("float16"): pb.DATA_TYPE_FLOAT16,
    np.dtype("uint8"): pb.DATA_TYPE_UINT8,
    np.dtype("int32"): pb.DATA_TYPE_INT32,
    np.dtype("int64"): pb.DATA_TYPE_INT64,
    np.dtype("bool"): pb.DATA_TYPE_BOOL,
}

#: Upper bound on elements of one tensor, so a forged shape cannot make us allocate terabytes.
MAX_ELEMENTS = 1 << 31
#: Upper bound on dimensions (numpy supports at most 64; no Ludus field needs more than a few).
MAX_RANK = 32


class TensorFormatError(ValueError):
    """A tensor on the wire is malformed. `field` names where it was found (e.g. "trajectory.rewards")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def to_tensor(array: np.ndarray | Sequence, dtype: Optional[np.dtype] = None) -> pb.Tensor:
    """Encode an array (copied to little-endian, C order) as a wire Tensor."""
    arr = np.asarray(array, dtype=dtype)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    wire_dtype = _FROM_NUMPY.get(arr.dtype.newbyteorder("="))
    if wire_dtype is None:
        raise TypeError(f"unsupported dtype {arr.dtype}; use one of {sorted(str(d) for d in _FROM_NUMPY)}")
    return pb.Tensor(dtype=wire_dtype, shape=list(arr.shape), raw_data=np.ascontiguousarray(arr).tobytes())


def observation_array(obs: np.ndarray | Sequence, may_be_pixels: bool = True) -> np.ndarray:
    """What an observation travels as: float32, except uint8 camera frames (when the observation may
    be visual), which stay uint8 (4x fewer bytes) and mean pixels: the service and LocalPolicy scale
    uint8 visual observations by 1/255."""
    arr = np.asarray(obs)
    if arr.dtype == np.uint8 and may_be_pixels:
        return arr
    return arr.astype(np.float32, copy=False)


def dtype_name(wire_dtype: int) -> str:
    return pb.DataType.Name(wire_dtype) if wire_dtype in pb.DataType.values() else f"unknown({wire_dtype})"


def from_tensor(tensor: pb.Tensor, field: str) -> np.ndarray:
    """Decode a wire Tensor into a read-only numpy array, validating dtype, shape and byte length."""
    if tensor.compression or tensor.compressed_data or tensor.compressed_channel_mapping:
        raise TensorFormatError(field, "is compressed, which only visual observations may be (COMPRESSION_PNG)")
    np_dtype = _TO_NUMPY.get(tensor.dtype)
    if np_dtype is None:
        raise TensorFormatError(field, f"dtype {dtype_name(tensor.dtype)} is not a valid tensor dtype")
    shape = tuple(tensor.shape)  # repeated int64: already Python ints
    if len(shape) > MAX_RANK:
        raise TensorFormatError(field, f"shape has {len(shape)} dimensions, more than {MAX_RANK}")
    if shape and min(shape) < 0:
        raise TensorFormatError(field, f"shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise TensorFormatError(field, f"shape {list(shape)} has {count} elements, more than {MAX_ELEMENTS}")
    if count == 0 and math.prod(d for d in shape if d) > MAX_ELEMENTS:  # numpy rejects such a shape even with 0 elements
        raise TensorFormatError(field, f"shape {list(shape)} the product of its non-zero dimensions exceeds {MAX_ELEMENTS}")
    expected = count * np_dtype.itemsize
    data = tensor.raw_data  # read once: each access of a bytes field copies it
    if len(data) != expected:
        raise TensorFormatError(
            field,
            f"raw_data has {len(data)} bytes but shape {list(shape)} x "
            f"{dtype_name(tensor.dtype)} needs {expected}",
        )
    arr = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    if tensor.dtype == pb.DATA_TYPE_BOOL:
        arr = arr != 0
    return arr


def is_set(tensor: pb.Tensor) -> bool:
    """True if a (sub-message) tensor field was given: proto3 has no presence for empty messages."""
    return tensor.dtype != pb.DATA_TYPE_UNSPECIFIED or len(tensor.shape) > 0 or len(tensor.raw_data) > 0
