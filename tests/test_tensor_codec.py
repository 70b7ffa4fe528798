"""Wire tensors: round trips for every dtype, and strict validation of what arrives."""
from __future__ import annotations

import numpy as np
import pytest

from ludus.v1 import trainer_pb2 as pb
from ludus_client.tensor_codec import TensorFormatError, from_tensor, to_tensor


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "uint8", "int32", "int64", "bool"])
def test_round_trip(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    np.testing.assert_array_equal(from_tensor(to_tensor(arr), "x"), arr)


def test_little_endian_on_the_wire():
    t = to_tensor(np.array([1.0], dtype=">f4"))
    assert t.raw_data == np.array([1.0], dtype="<f4").tobytes()


def test_byte_length_must_match_shape():
    t = to_tensor(np.zeros((2, 3), np.float32))
    t.raw_data = t.raw_data[:-1]
    with pytest.raises(TensorFormatError, match="obs: raw_data has 23 bytes but shape \\[2, 3\\]"):
        from_tensor(t, "obs")


def test_unspecified_dtype_and_absurd_shapes_are_rejected():
    with pytest.raises(TensorFormatError, match="dtype"):
        from_tensor(pb.Tensor(shape=[1], raw_data=b"\0\0\0\0"), "x")
    with pytest.raises(TensorFormatError, match="negative"):
        from_tensor(pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[-1]), "x")
    with pytest.raises(TensorFormatError, match="elements"):
        from_tensor(pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1 << 20, 1 << 20]), "x")
