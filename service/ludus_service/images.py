"""Decoding of PNG-compressed visual observations (ML-Agents' camera format).

A compressed Tensor carries one `compressed_data` entry per leading index (per step); an entry is one
PNG file or several PNG files concatenated. The decoded channels of an entry, in file order, are
grey = 1, grey+alpha = 2, RGB = 3, RGBA = 4 (palette images are expanded to RGB, their transparency
dropped). `compressed_channel_mapping`, when given, has one entry per decoded channel: the observation
channel it belongs to, -1 to drop it; channels mapped to the same index are averaged (ML-Agents'
semantics: a grey camera sent as RGB has the mapping [0, 0, 0]). Empty means identity, so an entry
must then decode to exactly the observation's channels.

Nothing from the sender is trusted. Before any pixel is decompressed, every entry is walked chunk by
chunk (signature, then length + type + data + CRC up to IEND; every length bounds-checked, every CRC
verified) and every IHDR's width and height are compared with the spec, so a decompression bomb (a
tiny file whose header claims 100000x100000) is refused without allocating anything; Pillow's global
MAX_IMAGE_PIXELS is not relied on. 16-bit PNGs are rejected: Pillow keeps 16-bit grey but silently
truncates 16-bit RGB(A) to 8 bits, so no scaling would be consistent, and Unity writes 8-bit files.
Animated PNGs (acTL) are rejected too. Every failure is InvalidArgument "<field>: step <i>: ...".
Pillow is imported on first use; a server installed without it answers Unimplemented for PNG tensors.
"""
from __future__ import annotations

import io
import math
import struct
import zlib
from typing import List, NamedTuple, Sequence

import numpy as np

from ludus.v1 import trainer_pb2 as pb
from ludus_client.tensor_codec import dtype_name
from ludus_service.errors import InvalidArgument, Unimplemented

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Upper bound on the values one compressed tensor may decode to (steps x decoded channels x H x W):
#: PNG compresses a flat image ~1000x, so without it a message of tiny files could demand terabytes.
MAX_DECODED_ELEMENTS = 1 << 28
_MAX_CHUNK = (1 << 31) - 1  # the PNG specification's limit on a chunk length
#: PNG colour type -> (decoded channels, name, allowed bit depths, Pillow modes it opens as).
_COLOR_TYPES = {
    0: (1, "grey", (1, 2, 4, 8, 16), ("L", "1")),
    2: (3, "RGB", (8, 16), ("RGB",)),
    3: (3, "palette", (1, 2, 4, 8), ("P",)),
    4: (2, "grey+alpha", (8, 16), ("LA",)),
    6: (4, "RGBA", (8, 16), ("RGBA",)),
}
_IHDR = struct.Struct(">IIBBBBB")
_CHUNK_HEAD = struct.Struct(">I4s")
_U32 = struct.Struct(">I")


class _Png(NamedTuple):
    start: int  # byte offsets of one PNG file inside its entry
    end: int
    color_type: int
    channels: int


def _split(data: bytes, fail, width: int, height: int, obs: str, max_channels: int, limit: str) -> List[_Png]:
    """Walk the concatenated PNG files of one entry; nothing is decompressed. `fail(msg)` raises."""
    n = len(data)
    if not n:
        fail("compressed_data entry is empty")
    view = memoryview(data)
    pngs: List[_Png] = []
    total = 0
    pos = 0
    while pos < n:
        k = len(pngs)
        where = f"PNG {k} (byte {pos})"
        if data[pos:pos + 8] != PNG_SIGNATURE:
            if k:
                fail(f"{n - pos} bytes after PNG {k - 1} are not a PNG file (no PNG signature at byte {pos})")
            fail("compressed_data entry is not a PNG file (no PNG signature at byte 0)")
        start = pos
        pos += 8
        color_type = -1
        seen_idat = seen_plte = False
        while True:
            if pos + 12 > n:
                fail(f"{where} is truncated: {n - pos} bytes left at byte {pos}, a chunk needs at least 12")
            length, ctype = _CHUNK_HEAD.unpack_from(data, pos)
            name = ctype.decode("latin-1")
            if not ctype.isalpha():
                fail(f"{where} is corrupt: invalid chunk type {ctype!r} at byte {pos}")
            if length > _MAX_CHUNK:
                fail(f"{where} is corrupt: chunk {name} at byte {pos} claims {length} bytes")
            end = pos + 12 + length
            if end > n:
                fail(f"{where} is truncated: chunk {name} at byte {pos} claims {length} bytes, {n - pos - 12} left")
            if zlib.crc32(view[pos + 4:pos + 8 + length]) != _U32.unpack_from(data, pos + 8 + length)[0]:
                fail(f"{where} is corrupt: CRC mismatch in chunk {name} at byte {pos}")
            if color_type < 0:
                if ctype != b"IHDR" or length != 13:
                    fail(f"{where} is corrupt: the first chunk is {name} ({length} bytes), not a 13-byte IHDR")
                w, h, depth, color_type, compression, filter_, interlace = _IHDR.unpack_from(data, pos + 8)
                # Checked before anything is decoded: a header claiming a huge image is refused here.
                if (w, h) != (width, height):
                    fail(f"{where} is {w}x{h} (width x height) but the observation is {obs} (channels x height x width)")
                info = _COLOR_TYPES.get(color_type)
                if info is None:
                    fail(f"{where} has invalid colour type {color_type}")
                if depth == 16 and depth in info[2]:
                    fail(f"{where} is a 16-bit {info[1]} PNG; only 8-bit (or lower) PNGs are supported")
                if depth not in info[2]:
                    fail(f"{where} has invalid bit depth {depth} for a {info[1]} PNG")
                if compression or filter_ or interlace > 1:
                    fail(f"{where} has an invalid IHDR (compression {compression}, filter {filter_}, interlace {interlace})")
                total += info[0]
                if total > max_channels:
                    fail(f"the PNG data decodes to more than {max_channels} channels ({limit})")
            elif ctype == b"IHDR":
                fail(f"{where} is corrupt: a second IHDR chunk at byte {pos}")
            elif ctype == b"acTL":
                fail(f"{where} is an animated PNG, which is not supported")
            elif ctype == b"IDAT":
                seen_idat = True
            elif ctype == b"PLTE":
                seen_plte = True
            pos = end
            if ctype == b"IEND":
                break
        if not seen_idat:
            fail(f"{where} is corrupt: it has no IDAT chunk")
        if color_type == 3 and not seen_plte:
            fail(f"{where} is corrupt: a palette PNG without a PLTE chunk")
        pngs.append(_Png(start, pos, color_type, _COLOR_TYPES[color_type][0]))
    return pngs


def _pixels(Image, png: bytes, color_type: int, width: int, height: int) -> np.ndarray:
    """One PNG file -> uint8 [C, H, W]. Raises on any decoding failure (the caller turns it into
    InvalidArgument)."""
    with Image.open(io.BytesIO(png), formats=("PNG",)) as im:
        if im.size != (width, height) or im.mode not in _COLOR_TYPES[color_type][3]:
            raise ValueError(f"Pillow opened it as {im.mode} {im.size[0]}x{im.size[1]}")
        im.load()
        if im.mode == "1":
            im = im.convert("L")
        if im.mode == "P":
            # Expanded here rather than by im.convert, which warns (global, not thread-safe state) on
            # transparency; indices beyond a short palette read black.
            lut = np.zeros((256, 3), np.uint8)
            pal = np.frombuffer(bytes(im.getpalette("RGB") or ()), np.uint8)[:768]
            lut[:pal.size // 3] = pal[:pal.size // 3 * 3].reshape(-1, 3)
            arr = lut[np.asarray(im)]
        else:
            arr = np.asarray(im)
    if arr.dtype != np.uint8 or arr.shape[:2] != (height, width):
        raise ValueError(f"decoded to {arr.dtype} {list(arr.shape)}")
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _step_name(i: int, leading: Sequence[int]) -> str:
    if len(leading) <= 1:
        return f"step {i}"
    return f"step {i} (index {[int(j) for j in np.unravel_index(i, leading)]})"


def decode_png_observation(tensor: pb.Tensor, field: str, leading: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """A COMPRESSION_PNG tensor -> float32 [*leading, C, H, W] in [0, 1] (pixels / 255, channels-first).

    `shape` is the observation's spec shape [C, H, W]; `leading` the dimensions before it ([T] for a
    trajectory, [] for one step). Any malformed input raises InvalidArgument(field, ...) naming the step.
    """
    leading = tuple(int(d) for d in leading)
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3:
        raise InvalidArgument(field, f"PNG compression needs a [channels, height, width] observation, the spec's shape is {list(shape)}")
    c, h, w = shape
    obs = f"{c}x{h}x{w}"
    if tensor.compression != pb.COMPRESSION_PNG:
        what = pb.Compression.Name(tensor.compression) if tensor.compression in pb.Compression.values() else f"unknown({tensor.compression})"
        raise InvalidArgument(field, f"compression is {what} but compressed_data/compressed_channel_mapping are set (expected COMPRESSION_PNG)")
    if tensor.dtype != pb.DATA_TYPE_UINT8:
        raise InvalidArgument(field, f"dtype {dtype_name(tensor.dtype)} not allowed with COMPRESSION_PNG (expected DATA_TYPE_UINT8)")
    if len(tensor.raw_data):
        raise InvalidArgument(field, "raw_data must be empty when the tensor is compressed (the pixels are in compressed_data)")
    expected = (*leading, c, h, w)
    if tuple(tensor.shape) != expected:
        raise InvalidArgument(field, f"shape {list(tensor.shape)} does not match the expected {list(expected)}")
    steps = math.prod(leading)
    entries = list(tensor.compressed_data)  # read once: each access of a bytes element copies it
    if len(entries) != steps:
        raise InvalidArgument(field, f"has {len(entries)} compressed_data entries but needs one per step ({steps})")
    mapping = np.array(tensor.compressed_channel_mapping, dtype=np.int64)
    if mapping.size:
        bad = np.flatnonzero((mapping < -1) | (mapping >= c))
        if bad.size:
            j = int(bad[0])
            raise InvalidArgument(field, f"compressed_channel_mapping[{j}] is {int(mapping[j])}, outside [-1, {c})")
        missing = np.flatnonzero(np.bincount(mapping[mapping >= 0], minlength=c) == 0)
        if missing.size:
            shown = f" {mapping.tolist()}" if mapping.size <= 32 else ""
            raise InvalidArgument(field, f"compressed_channel_mapping{shown} maps no PNG channel to observation channel(s) "
                                         f"{missing[:16].tolist()}{' ...' if missing.size > 16 else ''} (the observation has {c})")
    decoded = mapping.size or c
    if steps * max(decoded, c) * h * w > MAX_DECODED_ELEMENTS:
        raise InvalidArgument(field, f"{steps} steps x {max(decoded, c)} channels x {h}x{w} decodes to more than {MAX_DECODED_ELEMENTS} values")

    limit = (f"compressed_channel_mapping has {decoded} entries" if mapping.size else
             f"the observation has {c} and compressed_channel_mapping is empty")
    # Pass 1: structure, sizes and channel counts of every entry, before any pixel is decompressed.
    layouts = []
    for i, data in enumerate(entries):
        step = _step_name(i, leading)

        def fail(message: str, step: str = step):
            raise InvalidArgument(field, f"{step}: {message}")

        pngs = _split(data, fail, w, h, obs, decoded, limit)
        got = sum(p.channels for p in pngs)
        if got != decoded:
            kinds = (" + ".join(_COLOR_TYPES[p.color_type][1] for p in pngs) if len(pngs) <= 8 else f"{len(pngs)} PNG files")
            fail(f"the PNG data decodes to {got} channels ({kinds}) but {limit}")
        layouts.append(pngs)

    # Pass 2: decode straight into one uint8 buffer, then scale once.
    try:
        from PIL import Image  # imported here: a server without Pillow still serves everything else
    except ImportError:
        raise Unimplemented(field, "PNG-compressed observations need Pillow on the server (pip install pillow)") from None
    buf = np.empty((steps, decoded, h, w), np.uint8)
    for i, (data, pngs) in enumerate(zip(entries, layouts)):
        ch = 0
        for k, p in enumerate(pngs):
            try:
                pixels = _pixels(Image, data[p.start:p.end], p.color_type, w, h)
            except Exception as err:  # any Pillow/zlib failure is the sender's fault, never INTERNAL
                raise InvalidArgument(field, f"{_step_name(i, leading)}: PNG {k} (byte {p.start}) could not be decoded: "
                                             f"{type(err).__name__}: {str(err)[:200]}") from None
            buf[i, ch:ch + p.channels] = pixels
            ch += p.channels

    scale = np.float32(255)
    if not mapping.size or np.array_equal(mapping, np.arange(c)):
        out = np.divide(buf, scale, dtype=np.float32)
    else:
        keep = np.flatnonzero(mapping >= 0)
        counts = np.bincount(mapping[keep], minlength=c)
        if (counts == 1).all():  # a permutation, some channels dropped: one gather
            order = np.empty(c, np.int64)
            order[mapping[keep]] = keep
            out = np.divide(buf[:, order], scale, dtype=np.float32)
        else:  # channels mapped to the same index are averaged (ML-Agents)
            out = np.zeros((steps, c, h, w), np.float32)
            for j in keep.tolist():
                out[:, mapping[j]] += buf[:, j]
            out /= (scale * counts.astype(np.float32))[None, :, None, None]
    return out.reshape(expected)
