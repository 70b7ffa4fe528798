"""PNG compression of visual observations for the wire (ML-Agents' camera format).

`png_tensor` turns images [*leading, C, H, W] into a COMPRESSION_PNG Tensor with one compressed_data
entry per leading index (per step). C = 1, 3 or 4 is one grey / RGB / RGBA PNG per step. Any other C
is sent the way ML-Agents' Unity side sends stacked or many-channel observations: the channels in
groups of 3 as RGB PNGs, concatenated; the last group, when short, is padded with zero channels that
compressed_channel_mapping maps to -1 (e.g. C = 5: [0, 1, 2, 3, 4, -1]).

Needs Pillow (`pip install pillow`, or the SDK's `png` extra); it is imported on first use, so the
SDK's base install does not require it.
"""
from __future__ import annotations

import io
from typing import List

import numpy as np

from ludus.v1 import trainer_pb2 as pb

__all__ = ["png_tensor"]


def _pillow():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError("PNG-compressed observations need Pillow: pip install pillow "
                          "(or pip install 'ludus[png]')") from None
    return Image


def _encode(Image, hwc: np.ndarray, compress_level: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(hwc)).save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


def png_tensor(images: np.ndarray, compress_level: int = 6) -> pb.Tensor:
    """Encode images [*leading, C, H, W] (uint8, or floats in [0, 1] sent as round(x * 255)) as a
    COMPRESSION_PNG Tensor: dtype UINT8, shape [*leading, C, H, W], one compressed_data entry per
    leading index. The service decodes it to pixels / 255. `compress_level` is zlib's 0-9."""
    arr = np.asarray(images)
    if arr.ndim < 3:
        raise ValueError(f"images must be [*leading, channels, height, width], got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"images must be uint8 or floats in [0, 1], got dtype {arr.dtype}")
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise ValueError("float images must be finite and in [0, 1]")
        arr = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    *leading, c, h, w = arr.shape
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"images need at least one channel, row and column, got shape {list(arr.shape)}")
    Image = _pillow()
    steps = arr.reshape(-1, c, h, w)
    mapping: List[int] = []
    entries: List[bytes] = []
    if c in (1, 3, 4):
        for step in steps:
            entries.append(_encode(Image, step[0] if c == 1 else step.transpose(1, 2, 0), compress_level))
    else:
        groups = -(-c // 3)
        mapping = list(range(c)) + [-1] * (3 * groups - c)
        padded = np.zeros((3 * groups, h, w), np.uint8)
        for step in steps:
            padded[:c] = step
            entries.append(b"".join(_encode(Image, padded[3 * g:3 * g + 3].transpose(1, 2, 0), compress_level)
                                    for g in range(groups)))
    return pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=[*leading, c, h, w], compression=pb.COMPRESSION_PNG,
                     compressed_data=entries, compressed_channel_mapping=mapping)
