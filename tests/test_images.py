"""Visual observations on the wire: PNG-compressed (ML-Agents' camera format), raw uint8 and floats.

Round trips go through the SDK's encoder (ludus_client.images.png_tensor) and the service's decoder
(ludus_service.images / validation.decode_observations); hand-built PNGs cover what png_tensor never
produces (averaging mappings, dropped channels, 16-bit, forged headers, corrupt data).
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import List

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ludus.v1 import trainer_pb2 as pb
from ludus_client.images import png_tensor
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_client.tensor_codec import to_tensor
from ludus_service.errors import InvalidArgument
from ludus_service.images import PNG_SIGNATURE, decode_png_observation
from ludus_service.validation import decode_observations, parse_trajectory

FIELD = "trajectory.observations[0]"
rng = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# helpers

def png(hwc: np.ndarray, **kw) -> bytes:
    """One PNG file written by Pillow from uint8 [H, W] or [H, W, C]."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(hwc)).save(out, format="PNG", **kw)
    return out.getvalue()


def chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def hand_png(width: int, height: int, depth: int, color_type: int, idat: bytes = None, channels: int = 1) -> bytes:
    """A PNG assembled chunk by chunk (valid CRCs): for 16-bit files and forged headers."""
    if idat is None:
        row = b"\x00" + bytes(width * channels * depth // 8)
        idat = zlib.compress(row * height)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def compressed(entries: List[bytes], shape, mapping=()) -> pb.Tensor:
    return pb.Tensor(dtype=pb.DATA_TYPE_UINT8, shape=list(shape), compression=pb.COMPRESSION_PNG,
                     compressed_data=entries, compressed_channel_mapping=list(mapping))


def images(*shape) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def reject(tensor: pb.Tensor, leading, shape, *fragments: str, field: str = FIELD) -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_png_observation(tensor, field, leading, shape)
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(field + ": ")
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------
# round trips

@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("explicit", [False, True])
def test_round_trip(c: int, explicit: bool) -> None:
    x = images(4, c, 6, 10)
    tensor = png_tensor(x)
    assert tensor.compression == pb.COMPRESSION_PNG and tensor.dtype == pb.DATA_TYPE_UINT8
    assert list(tensor.shape) == [4, c, 6, 10] and len(tensor.compressed_data) == 4 and not tensor.raw_data
    pngs_per_step = tensor.compressed_data[0].count(PNG_SIGNATURE)
    assert pngs_per_step == (1 if c in (1, 3, 4) else -(-c // 3))
    if c in (1, 3, 4):
        assert list(tensor.compressed_channel_mapping) == []
    else:  # Unity's layout: RGB groups, the short last group padded and its padding dropped
        assert list(tensor.compressed_channel_mapping) == list(range(c)) + [-1] * (-c % 3)
    if explicit and not tensor.compressed_channel_mapping:
        tensor.compressed_channel_mapping[:] = list(range(c))
    elif not explicit and c in (6, 9):
        del tensor.compressed_channel_mapping[:]  # multiples of 3 need no mapping: identity
    out = decode_png_observation(tensor, FIELD, (4,), (c, 6, 10))
    assert out.dtype == np.float32 and out.shape == (4, c, 6, 10)
    np.testing.assert_array_equal(out, x.astype(np.float32) / np.float32(255))


def test_round_trip_float_input_and_leading_shapes() -> None:
    x = rng.random((2, 3, 3, 5, 7)).astype(np.float32)
    x[0, 0, 0, 0, 0] = 0.0
    x[0, 0, 0, 0, 1] = 1.0
    tensor = png_tensor(x)
    assert len(tensor.compressed_data) == 6
    out = decode_png_observation(tensor, FIELD, (2, 3), (3, 5, 7))
    np.testing.assert_array_equal(out, np.rint(x.astype(np.float64) * 255).astype(np.uint8) / np.float32(255))
    one = png_tensor(x[0, 0])  # no leading dimension: one step, one entry
    assert len(one.compressed_data) == 1
    np.testing.assert_array_equal(decode_png_observation(one, FIELD, (), (3, 5, 7)), out[0, 0])


def test_png_tensor_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        png_tensor(np.full((1, 3, 4, 4), 1.5, np.float32))
    with pytest.raises(ValueError):
        png_tensor(np.full((1, 3, 4, 4), np.nan, np.float32))
    with pytest.raises(TypeError):
        png_tensor(np.zeros((1, 3, 4, 4), np.int32))
    with pytest.raises(ValueError):
        png_tensor(np.zeros((4, 4), np.uint8))


def test_averaging_mapping_rgb_to_grey() -> None:
    """ML-Agents' grey camera: an RGB file with mapping [0, 0, 0] is one channel, the mean."""
    rgb = images(5, 6, 3)
    tensor = compressed([png(rgb)], [1, 1, 5, 6], mapping=[0, 0, 0])
    out = decode_png_observation(tensor, FIELD, (1,), (1, 5, 6))
    np.testing.assert_allclose(out[0, 0], rgb.astype(np.float64).mean(axis=2) / 255, atol=1e-6)


def test_stacked_grey_frames_and_dropped_channels() -> None:
    """Two stacked grey frames sent as RGB ([0,0,0,1,1,1]), and RGBA whose alpha is dropped (-1)."""
    a, b = images(4, 4, 3), images(4, 4, 3)
    out = decode_png_observation(compressed([png(a) + png(b)], [1, 2, 4, 4], [0, 0, 0, 1, 1, 1]), FIELD, (1,), (2, 4, 4))
    np.testing.assert_allclose(out[0], np.stack([a.mean(axis=2), b.mean(axis=2)]) / 255, atol=1e-6)
    rgba = images(4, 4, 4)
    out = decode_png_observation(compressed([png(rgba)], [1, 3, 4, 4], [0, 1, 2, -1]), FIELD, (1,), (3, 4, 4))
    np.testing.assert_array_equal(out[0], rgba[..., :3].transpose(2, 0, 1) / np.float32(255))
    # reordering: channels may be mapped in any order
    out = decode_png_observation(compressed([png(rgba)], [1, 4, 4, 4], [3, 2, 1, 0]), FIELD, (1,), (4, 4, 4))
    np.testing.assert_array_equal(out[0], rgba[..., ::-1].transpose(2, 0, 1) / np.float32(255))


def test_mixed_files_grey_alpha_and_palette() -> None:
    grey, la = images(4, 5), images(4, 5, 2)
    rgb = images(4, 5, 3)
    pal = Image.fromarray(rgb).quantize(colors=16)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    expected_pal = np.asarray(pal.convert("RGB")).transpose(2, 0, 1)
    entry = png(grey) + png(la) + buf.getvalue()  # 1 + 2 + 3 channels
    out = decode_png_observation(compressed([entry], [1, 6, 4, 5]), FIELD, (1,), (6, 4, 5))
    expected = np.concatenate([grey[None], la.transpose(2, 0, 1), expected_pal])
    np.testing.assert_array_equal(out[0], expected / np.float32(255))


def test_low_bit_depth_grey_is_scaled_to_8_bits() -> None:
    # A 1-bit grey PNG: white is 255, like in 8-bit files.
    bits = np.array([[0, 1, 1, 0]] * 2, np.uint8)
    packed = b"".join(b"\x00" + np.packbits(row).tobytes() for row in bits)
    data = hand_png(4, 2, 1, 0, idat=zlib.compress(packed))
    out = decode_png_observation(compressed([data], [1, 1, 2, 4]), FIELD, (1,), (1, 2, 4))
    np.testing.assert_array_equal(out[0, 0], bits.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# decode_observations: raw uint8 / float visual observations, non-visual observations unchanged

VISUAL = BehaviorSpec((ObservationSpec("camera", (3, 4, 5), pb.OBSERVATION_KIND_VISUAL), ObservationSpec("rays", (2,))),
                      ActionSpec(discrete_branches=(3,)))


def test_raw_uint8_visual_is_scaled() -> None:
    x = images(2, 3, 4, 5)
    vec = rng.standard_normal((2, 2)).astype(np.float32)
    cam, rays = decode_observations([to_tensor(x), to_tensor(vec)], VISUAL, "batch.observations", (2,))
    assert cam.dtype == np.float32
    np.testing.assert_array_equal(cam, x / np.float32(255))
    np.testing.assert_array_equal(rays, vec)
    # floats still work for visual observations, NaN is still rejected
    f = rng.random((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(decode_observations([to_tensor(f), to_tensor(vec)], VISUAL, "b", (2,))[0], f)
    f[1, 2, 3, 4] = np.nan
    with pytest.raises(InvalidArgument, match=r"b\[0\]: contains NaN"):
        decode_observations([to_tensor(f), to_tensor(vec)], VISUAL, "b", (2,))
    with pytest.raises(InvalidArgument, match=r"b\[0\]: dtype DATA_TYPE_INT32 not allowed here .*UINT8"):
        decode_observations([to_tensor(x.astype(np.int32)), to_tensor(vec)], VISUAL, "b", (2,))
    with pytest.raises(InvalidArgument, match=r"b\[0\]: shape"):
        decode_observations([to_tensor(x[:1]), to_tensor(vec)], VISUAL, "b", (2,))


def test_non_visual_observations_unchanged() -> None:
    x = images(2, 3, 4, 5)
    with pytest.raises(InvalidArgument, match=r"b\[1\]: is compressed, which only visual observations may be"):
        decode_observations([png_tensor(x), png_tensor(images(2, 1, 1, 2))], VISUAL, "b", (2,))
    with pytest.raises(InvalidArgument, match=r"b\[1\]: dtype DATA_TYPE_UINT8 not allowed here"):
        decode_observations([png_tensor(x), to_tensor(images(2, 2))], VISUAL, "b", (2,))


# ---------------------------------------------------------------------------------------------
# rejections: InvalidArgument naming the field and the step

def three_steps(c: int = 3, h: int = 8, w: int = 8) -> tuple:
    return [png(images(h, w, c)) for _ in range(3)], (3,), (c, h, w)


def test_truncated_png() -> None:
    entries, leading, shape = three_steps()
    for cut in (5, 8, 20, 33, len(entries[2]) - 1):
        bad = entries[:2] + [entries[2][:cut]]
        reject(compressed(bad, (*leading, *shape)), leading, shape, "step 2:")


def test_random_bytes() -> None:
    entries, leading, shape = three_steps()
    reject(compressed([entries[0], bytes(rng.integers(0, 256, 500, dtype=np.uint8)), entries[2]], (*leading, *shape)),
           leading, shape, "step 1:", "not a PNG")
    reject(compressed([entries[0], PNG_SIGNATURE + bytes(40), entries[2]], (*leading, *shape)), leading, shape, "step 1:")
    reject(compressed([entries[0], b"", entries[2]], (*leading, *shape)), leading, shape, "step 1:", "empty")


def test_corrupt_crc_trailing_bytes_and_bad_pixel_data() -> None:
    entries, leading, shape = three_steps()
    flipped = bytearray(entries[1])
    flipped[45] ^= 0xFF  # inside IDAT: the CRC no longer matches
    reject(compressed([entries[0], bytes(flipped), entries[2]], (*leading, *shape)), leading, shape, "step 1:", "CRC")
    reject(compressed([entries[0], entries[1] + b"junk", entries[2]], (*leading, *shape)), leading, shape,
           "step 1:", "bytes after PNG 0 are not a PNG file")
    garbage = hand_png(8, 8, 8, 2, idat=b"not zlib at all")  # well-formed chunks, undecodable pixels
    reject(compressed([entries[0], entries[1], garbage], (*leading, *shape)), leading, shape, "step 2:", "could not be decoded")
    short = hand_png(8, 8, 8, 2, idat=zlib.compress(b"\x00" * 10))  # too few pixels
    reject(compressed([short, entries[1], entries[2]], (*leading, *shape)), leading, shape, "step 0:", "could not be decoded")
    no_idat = PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    reject(compressed([entries[0], no_idat, entries[2]], (*leading, *shape)), leading, shape, "step 1:", "no IDAT")
    lying = bytearray(entries[0])
    lying[33:37] = struct.pack(">I", 0x7FFFFFF0)  # the first chunk after IHDR claims ~2 GiB
    reject(compressed([bytes(lying), entries[1], entries[2]], (*leading, *shape)), leading, shape, "step 0:", "truncated")


def test_wrong_image_size_matches_the_documented_message() -> None:
    entries, leading, shape = three_steps(3, 84, 84)
    entries[2] = png(images(32, 32, 3))
    message = reject(compressed(entries, (*leading, *shape)), leading, shape, "step 2:")
    assert message == (f"{FIELD}: step 2: PNG 0 (byte 0) is 32x32 (width x height) but the observation is "
                       "3x84x84 (channels x height x width)")
    # width and height are not swapped: a 84-wide, 32-high image for a 3x32x84 observation is fine
    ok = png(images(32, 84, 3))
    decode_png_observation(compressed([ok], (1, 3, 32, 84)), FIELD, (1,), (3, 32, 84))
    reject(compressed([ok], (1, 3, 84, 32)), (1,), (3, 84, 32), "step 0:", "84x32")


def test_wrong_entry_count_shape_dtype_raw_data_and_compression() -> None:
    entries, leading, shape = three_steps()
    reject(compressed(entries[:2], (*leading, *shape)), leading, shape, "2 compressed_data entries", "(3)")
    reject(compressed(entries + entries[:1], (*leading, *shape)), leading, shape, "4 compressed_data entries")
    reject(compressed(entries, (3, 3, 8, 9)), leading, shape, "shape [3, 3, 8, 9]")
    reject(compressed(entries, ()), leading, shape, "shape []")
    t = compressed(entries, (*leading, *shape))
    t.dtype = pb.DATA_TYPE_FLOAT32
    reject(t, leading, shape, "DATA_TYPE_FLOAT32", "UINT8")
    t = compressed(entries, (*leading, *shape))
    t.raw_data = b"\x00" * 10
    reject(t, leading, shape, "raw_data must be empty")
    t = compressed(entries, (*leading, *shape))
    t.compression = pb.COMPRESSION_NONE
    reject(t, leading, shape, "COMPRESSION_NONE")
    t.compression = 7
    reject(t, leading, shape, "unknown(7)")


def test_channel_count_mismatch() -> None:
    entries, leading, shape = three_steps()
    entries[1] = png(images(8, 8, 4))  # RGBA where RGB is expected, no mapping
    reject(compressed(entries, (*leading, *shape)), leading, shape, "step 1:", "more than 3 channels")
    entries[1] = png(images(8, 8))  # grey where RGB is expected
    reject(compressed(entries, (*leading, *shape)), leading, shape, "step 1:", "decodes to 1 channels (grey)", "has 3")
    # with a mapping, the PNG channels must match the mapping's length
    rgb = png(images(8, 8, 3))
    reject(compressed([rgb, rgb + rgb, rgb], (3, 1, 8, 8), [0, 0, 0]), (3,), (1, 8, 8), "step 1:", "mapping has 3 entries")
    reject(compressed([rgb, rgb, rgb], (3, 1, 8, 8), [0, 0, 0, 0]), (3,), (1, 8, 8), "step 0:", "decodes to 3 channels", "4 entries")


def test_bad_mapping() -> None:
    rgb = png(images(8, 8, 3))
    reject(compressed([rgb], (1, 3, 8, 8), [0, 1, 3]), (1,), (3, 8, 8), "compressed_channel_mapping[2] is 3, outside [-1, 3)")
    reject(compressed([rgb], (1, 3, 8, 8), [0, -2, 1]), (1,), (3, 8, 8), "compressed_channel_mapping[1] is -2")
    reject(compressed([rgb], (1, 3, 8, 8), [0, 1, -1]), (1,), (3, 8, 8), "observation channel(s) [2]")
    reject(compressed([rgb], (1, 3, 8, 8), [-1, -1, -1]), (1,), (3, 8, 8), "observation channel(s) [0, 1, 2]")


def test_16_bit_pngs_are_rejected() -> None:
    """Documented: 16-bit files are refused (Pillow would keep 16-bit grey but truncate 16-bit RGB)."""
    grey16 = io.BytesIO()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(grey16, format="PNG")
    assert grey16.getvalue()[24] == 16  # IHDR bit depth
    reject(compressed([png(images(8, 8))] * 2 + [grey16.getvalue()], (3, 1, 8, 8)), (3,), (1, 8, 8), "step 2:", "16-bit grey")
    rgb16 = hand_png(8, 8, 16, 2, channels=3)
    reject(compressed([rgb16], (1, 3, 8, 8)), (1,), (3, 8, 8), "step 0:", "16-bit RGB")
    bad_depth = hand_png(8, 8, 4, 2, channels=3)
    reject(compressed([bad_depth], (1, 3, 8, 8)), (1,), (3, 8, 8), "step 0:", "invalid bit depth 4")
    bad_type = hand_png(8, 8, 8, 5)
    reject(compressed([bad_type], (1, 3, 8, 8)), (1,), (3, 8, 8), "step 0:", "invalid colour type 5")


def test_decompression_bomb_refused_from_the_header(monkeypatch) -> None:
    """The IHDR claims 100000x100000 (10^10 pixels, ~30 GB as RGB) with a 1-row IDAT: refused from
    the header, before Pillow is asked to open (decompress, allocate) anything."""
    from PIL import Image

    bomb = hand_png(100000, 100000, 8, 2, idat=zlib.compress(b"\x00" * 10))
    opened: List[int] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    reject(compressed([bomb], (1, 3, 8, 8)), (1,), (3, 8, 8), "step 0:", "100000x100000")
    assert opened == []
    reject(compressed([png(images(8, 8, 3)), bomb], (2, 3, 8, 8)), (2,), (3, 8, 8), "step 1:", "100000x100000")
    # also when the observation itself is large: each file must be exactly H x W
    reject(compressed([bomb], (1, 3, 64, 64)), (1,), (3, 64, 64), "step 0:", "100000x100000")


def test_total_decoded_size_is_capped(monkeypatch) -> None:
    import ludus_service.images as images_module
    monkeypatch.setattr(images_module, "MAX_DECODED_ELEMENTS", 1000)
    rgb = png(images(8, 8, 3))
    reject(compressed([rgb] * 10, (10, 3, 8, 8)), (10,), (3, 8, 8), "more than 1000 values")


def test_animated_png_rejected() -> None:
    frame = images(8, 8, 3)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", save_all=True,
                                append_images=[Image.fromarray(255 - frame)], duration=10)
    reject(compressed([buf.getvalue()], (1, 3, 8, 8)), (1,), (3, 8, 8), "step 0:", "animated")


def test_multi_dimensional_leading_names_the_index() -> None:
    rgb = png(images(4, 4, 3))
    reject(compressed([rgb, rgb, rgb, b"x"], (2, 2, 3, 4, 4)), (2, 2), (3, 4, 4), "step 3 (index [1, 1])")


# ---------------------------------------------------------------------------------------------
# parse_trajectory end to end

T = 5


def trajectory(camera: pb.Tensor, next_camera: pb.Tensor) -> pb.Trajectory:
    traj = pb.Trajectory(agent_id="agent-0", policy_version=1,
                         observations=[camera, to_tensor(rng.standard_normal((T, 2)).astype(np.float32))],
                         rewards=to_tensor(rng.standard_normal(T).astype(np.float32)),
                         next_observations=[next_camera, to_tensor(np.zeros(2, np.float32))])
    traj.discrete_actions.CopyFrom(to_tensor(rng.integers(0, 3, (T, 1)).astype(np.int32)))
    traj.discrete_log_probs.CopyFrom(to_tensor(np.full((T, 1), -1.1, np.float32)))
    return traj


def test_parse_trajectory_with_png_observations() -> None:
    x, nxt = images(T, 3, 4, 5), images(3, 4, 5)
    data = parse_trajectory(trajectory(png_tensor(x), png_tensor(nxt)), VISUAL)
    assert data.length == T
    np.testing.assert_array_equal(data.observations[0], x / np.float32(255))
    np.testing.assert_array_equal(data.next_observations[0], nxt / np.float32(255))
    # mixing raw uint8 and PNG is fine too
    data = parse_trajectory(trajectory(to_tensor(x), png_tensor(nxt)), VISUAL)
    np.testing.assert_array_equal(data.observations[0], x / np.float32(255))


def test_parse_trajectory_rejects_a_bad_step() -> None:
    spec = BehaviorSpec((ObservationSpec("camera", (3, 84, 84), pb.OBSERVATION_KIND_VISUAL), ObservationSpec("rays", (2,))),
                        ActionSpec(discrete_branches=(3,)))
    camera = png_tensor(images(T, 3, 84, 84), compress_level=1)
    camera.compressed_data[3] = png(images(32, 32, 3))
    with pytest.raises(InvalidArgument) as info:
        parse_trajectory(trajectory(camera, png_tensor(images(3, 84, 84))), spec)
    assert str(info.value).startswith("trajectory.observations[0]: step 3: PNG 0 (byte 0) is 32x32 (width x height) "
                                      "but the observation is 3x84x84")
    narrow = png_tensor(images(3, 84, 80))
    with pytest.raises(InvalidArgument, match=r"next_observations\[0\]: shape \[3, 84, 80\] does not match"):
        parse_trajectory(trajectory(png_tensor(images(T, 3, 84, 84), compress_level=1), narrow), spec)
    narrow.shape[:] = [3, 84, 84]  # the declared shape is right, the file is not
    with pytest.raises(InvalidArgument) as info:
        parse_trajectory(trajectory(png_tensor(images(T, 3, 84, 84), compress_level=1), narrow), spec)
    assert str(info.value).startswith("trajectory.next_observations[0]: step 0: PNG 0 (byte 0) is 80x84")


# ---------------------------------------------------------------------------------------------
# property: arbitrary bytes never raise anything but InvalidArgument

VALID = png(images(4, 4, 3))


@st.composite
def entries(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "bytes", "signature", "mutated", "chunks"]))
    if kind == "valid":
        return VALID
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "signature":
        return PNG_SIGNATURE + draw(st.binary(max_size=200))
    if kind == "mutated":  # a valid file, truncated or with bytes replaced
        data = bytearray(VALID[:draw(st.integers(0, len(VALID)))])
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    # well-formed chunks (valid CRCs) with arbitrary header fields and pixel data: reaches Pillow
    w, h = draw(st.sampled_from([(4, 4), (4, 4), (4, 3), (0, 0), (1, 1 << 31)]))
    fields = draw(st.one_of(
        st.binary(min_size=5, max_size=5),
        st.tuples(st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([0, 2, 3, 4, 6]), st.just(0), st.just(0),
                  st.sampled_from([0, 1])).map(bytes),
    ))
    ihdr = struct.pack(">II", w, h) + fields
    body = draw(st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(zlib.compress)))
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(entries(), min_size=1, max_size=3), mapping=st.sampled_from([[], [0, 1, 2], [2, 1, 0, -1], [0, 0, 1, 2]]))
def test_arbitrary_bytes_only_invalid_argument(data: List[bytes], mapping: List[int]) -> None:
    tensor = compressed(data, (len(data), 3, 4, 4), mapping)
    try:
        out = decode_png_observation(tensor, FIELD, (len(data),), (3, 4, 4))
    except InvalidArgument as err:
        assert str(err).startswith(FIELD + ": ")
    else:
        assert out.shape == (len(data), 3, 4, 4) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
