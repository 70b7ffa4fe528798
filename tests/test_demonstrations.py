"""ML-Agents `.demo` files: framing, round trips, PNG observations, errors with byte offsets, specs."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from ludus.mlagents.v1 import demonstration_pb2 as dpb
from ludus.v1 import trainer_pb2 as pb
from ludus_client.demo_file import (
    META_AREA_BYTES, DemoFormatError, DemoObservation, DemoStep, encode_demo_file, read_demo_file, write_demo_file,
)
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_service.demo_recorder import DemonstrationRecorder
from ludus_service.demonstrations import (
    check_demo_matches_spec, load_demonstration, spec_from_demo,
)
from ludus_service.errors import InvalidArgument


def _delimited(msg) -> bytes:
    payload = msg.SerializeToString()
    head, n = bytearray(), len(payload)
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def _vec(values) -> DemoObservation:
    arr = np.asarray(values, np.float32)
    return DemoObservation(shape=arr.shape, data=arr)


def _episode_steps(rng, length, agent_id=0, obs_size=3, done=True, max_step=False):
    """Unity's record model: record t = obs_t, action_t, reward since the previous decision."""
    steps = []
    for t in range(length + 1):
        last = t == length
        steps.append(DemoStep(
            observations=[_vec(rng.normal(size=obs_size)), DemoObservation(shape=(2, 2), data=rng.normal(size=(2, 2)).astype(np.float32))],
            reward=0.0 if t == 0 else float(t), done=last and done, max_step_reached=last and max_step, agent_id=agent_id,
            continuous_actions=rng.normal(size=2).astype(np.float32), discrete_actions=np.array([t % 3], np.int32),
            action_mask=np.array([False, False, t % 2 == 1]),
        ))
    return steps


def _hand_built_file(meta_steps=None, steps=3, trailer=b""):
    """A file assembled byte by byte, without our writer: meta, zero padding to 33, brain, records."""
    meta = dpb.DemonstrationMetaProto(api_version=1, demonstration_name="hand", number_steps=steps if meta_steps is None else meta_steps,
                                      number_episodes=1, mean_reward=2.0)
    head = _delimited(meta)
    head += bytes(META_AREA_BYTES - len(head))
    brain = dpb.BrainParametersProto(brain_name="B", action_spec=dpb.ActionSpecProto(num_continuous_actions=1))
    body = _delimited(brain)
    for t in range(steps):
        pair = dpb.AgentInfoActionPairProto(
            agent_info=dpb.AgentInfoProto(reward=float(t), done=t == steps - 1, id=7, observations=[
                dpb.ObservationProto(shape=[2], float_data=dpb.ObservationProto.FloatData(data=[t, -t]))]),
            action_info=dpb.AgentActionProto(continuous_actions=[0.5 * t]))
        body += _delimited(pair)
    return head + body + trailer


# ------------------------------------------------------------------------------------ framing


def test_hand_built_file_parses_and_unity_trailer_is_ignored():
    trailer = dpb.DemonstrationMetaProto(api_version=1, number_steps=3).SerializeToString()  # Unity appends this
    data = _hand_built_file(trailer=trailer)
    demo = read_demo_file(data)
    assert demo.meta.name == "hand" and demo.meta.number_steps == 3 and demo.brain_name == "B"
    assert demo.continuous_size == 1 and demo.discrete_branches == ()
    assert [s.reward for s in demo.steps] == [0.0, 1.0, 2.0]
    assert [s.done for s in demo.steps] == [False, False, True]
    assert demo.steps[0].offset > META_AREA_BYTES
    np.testing.assert_array_equal(demo.steps[2].observations[0].data, [2, -2])
    assert demo.trailer_offset == len(data) - len(trailer)


def test_meta_zero_steps_reads_to_end_of_file():
    demo = read_demo_file(_hand_built_file(meta_steps=0))
    assert len(demo.steps) == 3 and demo.trailer_offset is None


def test_writer_layout_matches_unity(tmp_path):
    rng = np.random.default_rng(0)
    steps = _episode_steps(rng, 4)
    path = tmp_path / "x.demo"
    meta = write_demo_file(path, steps, continuous_size=2, discrete_branches=[3], name="Expert Run", brain_name="Walker?team=0")
    data = path.read_bytes()
    length = data[0]
    parsed = dpb.DemonstrationMetaProto.FromString(data[1:1 + length])
    assert (parsed.api_version, parsed.demonstration_name, parsed.number_steps, parsed.number_episodes) == (1, "Expert Run", 5, 1)
    assert parsed.mean_reward == pytest.approx(sum(range(5)) / 1)
    assert data[1 + length:META_AREA_BYTES] == bytes(META_AREA_BYTES - 1 - length)  # zero padding
    brain_len = data[META_AREA_BYTES]
    brain = dpb.BrainParametersProto.FromString(data[META_AREA_BYTES + 1:META_AREA_BYTES + 1 + brain_len])
    assert brain.brain_name == "Walker?team=0"
    assert (brain.action_spec.num_continuous_actions, brain.action_spec.num_discrete_actions, list(brain.action_spec.discrete_branch_sizes)) == (2, 1, [3])
    assert meta.number_steps == 5 and meta.name == "Expert Run"
    assert not list(tmp_path.glob(".*.tmp")), "the temp file must be renamed away"


def test_long_name_is_shortened_so_the_meta_fits_33_bytes():
    rng = np.random.default_rng(1)
    data, meta = encode_demo_file(_episode_steps(rng, 2), continuous_size=2, discrete_branches=[3], name="é" * 40)
    assert len(meta.name) < 40 and meta.name == "é" * len(meta.name)
    assert data[0] + 1 <= META_AREA_BYTES
    assert read_demo_file(data).meta.name == meta.name


def test_round_trip_keeps_everything(tmp_path):
    rng = np.random.default_rng(2)
    steps = _episode_steps(rng, 3, agent_id=4) + _episode_steps(rng, 2, agent_id=9, done=False)
    write_demo_file(tmp_path / "r.demo", steps, continuous_size=2, discrete_branches=[3])
    demo = read_demo_file(tmp_path / "r.demo")
    assert demo.meta.number_episodes == 2  # one finished, one still open
    assert len(demo.steps) == len(steps)
    for a, b in zip(steps, demo.steps):
        assert (a.reward, a.done, a.max_step_reached, a.agent_id) == (b.reward, b.done, b.max_step_reached, b.agent_id)
        np.testing.assert_array_equal(a.continuous_actions, b.continuous_actions)
        np.testing.assert_array_equal(a.discrete_actions, b.discrete_actions)
        np.testing.assert_array_equal(a.action_mask, b.action_mask)
        for oa, ob in zip(a.observations, b.observations):
            assert oa.shape == ob.shape
            np.testing.assert_array_equal(oa.data, ob.data)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("mutate, offset, words", [
    (lambda d: b"", 0, "the file is empty"),
    (lambda d: b"\xff\xff", 0, "truncated varint"),
    (lambda d: b"\xff" * 12, 0, "longer than 10 bytes"),
    (lambda d: d[:20], 20, "ends before the BrainParameters record"),
    (lambda d: b"\x40" + d[1:], 0, "past byte 33"),
    (lambda d: d[:-3], None, "claims"),
    (lambda d: b"\x02\x08\x05" + d[3:], 0, "unsupported demonstration api_version 5"),
])
def test_malformed_files_name_the_byte_offset(mutate, offset, words):
    data = _hand_built_file()
    with pytest.raises(DemoFormatError) as info:
        read_demo_file(mutate(data))
    assert words in str(info.value)
    if offset is not None:
        assert info.value.offset == offset and str(info.value).startswith(f"byte {offset}: ")


def test_fewer_steps_than_the_meta_says_is_an_error():
    data = _hand_built_file(meta_steps=5)
    with pytest.raises(DemoFormatError, match=rf"^byte {len(data)}: the metadata says 5 steps but the file ends after 3 step records"):
        read_demo_file(data)


def test_unparsable_record_names_its_offset():
    good = _hand_built_file(steps=1)
    bad = good + b"\x03\xff\xff\xff"  # a 3-byte "record" that is not a protobuf message
    with pytest.raises(DemoFormatError) as info:
        read_demo_file(_patch_steps(bad, 2))
    assert info.value.offset == len(good) and "step record 1" in str(info.value) and "AgentInfoActionPairProto" in str(info.value)


def _patch_steps(data: bytes, steps: int) -> bytes:
    meta = dpb.DemonstrationMetaProto.FromString(data[1:1 + data[0]])
    meta.number_steps = steps
    head = _delimited(meta)
    return head + bytes(META_AREA_BYTES - len(head)) + data[META_AREA_BYTES:]


def test_float_count_mismatch_is_reported():
    data = _hand_built_file(steps=1)
    pair = dpb.AgentInfoActionPairProto(agent_info=dpb.AgentInfoProto(observations=[
        dpb.ObservationProto(shape=[4], float_data=dpb.ObservationProto.FloatData(data=[1, 2, 3]))]))
    with pytest.raises(DemoFormatError, match=rf"^byte {len(data)}: step record 1 observation 0 has 3 floats but shape \[4\] needs 4"):
        read_demo_file(_patch_steps(data + _delimited(pair), 2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=4))
def test_truncated_or_corrupted_files_parse_or_raise_demo_format_error(cut, flips):
    data = bytearray(_hand_built_file(steps=4))
    for pos, xor in flips:
        if pos < len(data):
            data[pos] ^= xor
    data = bytes(data[:cut]) if cut < len(data) else bytes(data)
    try:
        demo = read_demo_file(data)
    except DemoFormatError as err:
        assert 0 <= err.offset <= len(data)
        return
    assert demo.steps and all(isinstance(s, DemoStep) for s in demo.steps)


# ------------------------------------------------------------------------------- server side


def test_load_demonstration_splits_episodes_and_pairs_records(tmp_path):
    rng = np.random.default_rng(3)
    ep1 = _episode_steps(rng, 3, agent_id=1)
    ep2 = _episode_steps(rng, 2, agent_id=1, max_step=True)
    write_demo_file(tmp_path / "d.demo", ep1 + ep2, continuous_size=2, discrete_branches=[3])
    demo = load_demonstration(tmp_path / "d.demo")
    assert [t.length for t in demo.trajectories] == [3, 2]
    first, second = demo.trajectories
    assert first.done and not first.interrupted and second.interrupted and not second.done
    assert first.dones.tolist() == [False, False, True] and second.dones.tolist() == [False, False]
    np.testing.assert_array_equal(first.rewards, [1, 2, 3])  # reward of step t = the next record's reward
    np.testing.assert_array_equal(first.observations[0], np.stack([s.observations[0].data for s in ep1[:3]]))
    np.testing.assert_array_equal(first.next_observations[0], np.stack([s.observations[0].data for s in ep1[1:]]))
    np.testing.assert_array_equal(first.observations[1].shape, [3, 2, 2])
    np.testing.assert_array_equal(first.continuous_actions, np.stack([s.continuous_actions for s in ep1[:3]]))
    assert first.discrete_actions.dtype == np.int64 and first.discrete_actions[:, 0].tolist() == [0, 1, 2]
    assert first.action_masks.tolist() == [[True, True, True], [True, True, False], [True, True, True]]  # True = allowed
    assert demo.spec.observations[1].kind == pb.OBSERVATION_KIND_ENTITIES
    lagged = load_demonstration(tmp_path / "d.demo", unity_action_lag=True).trajectories[0]
    np.testing.assert_array_equal(lagged.continuous_actions, np.stack([s.continuous_actions for s in ep1[1:]]))


def test_recorder_round_trip_through_a_file(tmp_path):
    spec = BehaviorSpec((ObservationSpec("pos", (3,)), ObservationSpec("cam", (3, 4, 5), pb.OBSERVATION_KIND_VISUAL)),
                        ActionSpec(1, (2, 3)))
    rng = np.random.default_rng(4)
    rec = DemonstrationRecorder(spec, tmp_path, brain_name="Agent", compress_visual=True)

    def piece(n):
        frames = rng.integers(0, 256, size=(n, 3, 4, 5)).astype(np.uint8)
        masks = np.ones((n, 5), bool)
        masks[:, 4] = False
        return dict(observations=[rng.normal(size=(n, 3)).astype(np.float32), frames / np.float32(255)],
                    continuous_actions=rng.normal(size=(n, 1)).astype(np.float32),
                    discrete_actions=np.stack([rng.integers(0, 2, n), rng.integers(0, 2, n)], 1),
                    rewards=rng.normal(size=n).astype(np.float32), action_masks=masks)

    a1, a2, b1 = piece(4), piece(3), piece(5)
    rec.add(agent_id="a", next_observations=[a2["observations"][0][0], a2["observations"][1][0]], **a1)
    rec.add(agent_id="b", done=True, **b1)
    rec.add(agent_id="a", next_observations=[np.zeros(3, np.float32), np.zeros((3, 4, 5), np.float32)], **a2)
    path = rec.finish("expert")
    assert path == tmp_path / "expert.demo"
    raw = read_demo_file(path)
    assert raw.steps[0].observations[1].compressed  # lossless k/255 frames went in as PNG
    assert raw.meta.number_steps == (4 + 3 + 1) + (5 + 1) and raw.meta.number_episodes == 2
    total = a1["rewards"].sum() + a2["rewards"].sum() + b1["rewards"].sum()
    assert raw.meta.mean_reward == pytest.approx(total / 2, rel=1e-5)

    demo = load_demonstration(path, spec)
    a, b = demo.trajectories
    assert a.length == 7 and a.interrupted and not a.done  # still open at finish: closed as interrupted
    assert b.length == 5 and b.done and b.dones[-1]
    for k in range(2):
        np.testing.assert_array_equal(a.observations[k], np.concatenate([a1["observations"][k], a2["observations"][k]]))
    np.testing.assert_array_equal(a.rewards, np.concatenate([a1["rewards"], a2["rewards"]]))
    np.testing.assert_array_equal(a.discrete_actions, np.concatenate([a1["discrete_actions"], a2["discrete_actions"]]))
    np.testing.assert_array_equal(a.action_masks, np.concatenate([a1["action_masks"], a2["action_masks"]]))
    np.testing.assert_array_equal(b.next_observations[1][-1], b1["observations"][1][-1])  # done without next obs
    with pytest.raises(ValueError, match="name"):
        rec.finish("../escape")


def _png(hwc: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(hwc).save(out, format="PNG")
    return out.getvalue()


def _png_demo(tmp_path, shape, payloads, mapping=()):
    steps = [DemoStep(observations=[DemoObservation(shape=shape, png=p, channel_mapping=tuple(mapping))],
                      reward=float(i), done=i == len(payloads) - 1, continuous_actions=np.zeros(1, np.float32))
             for i, p in enumerate(payloads)]
    path = tmp_path / "png.demo"
    write_demo_file(path, steps, continuous_size=1)
    return path


def test_png_observations_decode_channels_first(tmp_path):
    rng = np.random.default_rng(5)
    rgb = [rng.integers(0, 256, size=(4, 6, 3)).astype(np.uint8) for _ in range(3)]
    demo = load_demonstration(_png_demo(tmp_path, (3, 4, 6), [_png(x) for x in rgb]))
    assert demo.spec.observations[0].kind == pb.OBSERVATION_KIND_VISUAL
    traj = demo.trajectories[0]
    np.testing.assert_allclose(traj.observations[0], np.stack([x.transpose(2, 0, 1) for x in rgb[:2]]) / 255, rtol=1e-6)
    np.testing.assert_allclose(traj.next_observations[0][-1], rgb[2].transpose(2, 0, 1) / 255, rtol=1e-6)


def test_five_channel_png_with_two_concatenated_files_and_mapping(tmp_path):
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 256, size=(5, 3, 4)).astype(np.uint8) for _ in range(2)]

    def encode(chw):
        padded = np.concatenate([chw, np.zeros((1, 3, 4), np.uint8)])
        return _png(padded[:3].transpose(1, 2, 0)) + _png(padded[3:].transpose(1, 2, 0))

    path = _png_demo(tmp_path, (5, 3, 4), [encode(f) for f in frames], mapping=(0, 1, 2, 3, 4, -1))
    traj = load_demonstration(path).trajectories[0]
    np.testing.assert_allclose(traj.observations[0][0], frames[0] / 255, rtol=1e-6)
    np.testing.assert_allclose(traj.next_observations[0][0], frames[1] / 255, rtol=1e-6)


def test_grey_observation_sent_as_rgb_without_mapping_is_averaged_like_mlagents(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    traj = load_demonstration(_png_demo(tmp_path, (1, 2, 2), [_png(rgb), _png(rgb)])).trajectories[0]
    np.testing.assert_allclose(traj.observations[0], np.full((1, 1, 2, 2), 60 / 255), rtol=1e-6)


def test_corrupt_png_names_record_and_offset(tmp_path):
    good = _png(np.zeros((2, 2, 3), np.uint8))
    path = _png_demo(tmp_path, (3, 2, 2), [good, good[:-5]])
    offset = read_demo_file(path).steps[1].offset
    with pytest.raises(InvalidArgument, match=rf"^demo_path: step record 1 \(byte {offset}\) observation 0: PNG 0 \(byte 0\) is truncated"):
        load_demonstration(path)


def test_spec_mismatch_messages(tmp_path):
    rng = np.random.default_rng(7)
    write_demo_file(tmp_path / "d.demo", _episode_steps(rng, 2, obs_size=8), continuous_size=2, discrete_branches=[3])
    demo_spec = spec_from_demo(read_demo_file(tmp_path / "d.demo"))
    assert [o.shape for o in demo_spec.observations] == [(8,), (2, 2)]
    ok = BehaviorSpec((ObservationSpec("a", (8,)), ObservationSpec("b", (2, 2), pb.OBSERVATION_KIND_ENTITIES)), ActionSpec(2, (3,)))
    check_demo_matches_spec(demo_spec, ok, "f")
    cases = [
        (BehaviorSpec((ObservationSpec("a", (6,)), ok.observations[1]), ok.actions),
         "f: observation 0 has shape [8] in the demonstration but [6] in the behaviour spec"),
        (BehaviorSpec(ok.observations[:1], ok.actions), "f: the demonstration has 2 observations but the behaviour spec has 1"),
        (BehaviorSpec(ok.observations, ActionSpec(1, (3,))), "f: continuous actions: 2 in the demonstration, 1 in the behaviour"),
        (BehaviorSpec(ok.observations, ActionSpec(2, (3, 2))), "f: discrete branches: [3] in the demonstration, [3, 2] in the behaviour"),
        (BehaviorSpec((ObservationSpec("a", (8,), observation_type=pb.OBSERVATION_TYPE_GOAL_SIGNAL), ok.observations[1]), ok.actions),
         "f: observation 0 is a DEFAULT observation in the demonstration but GOAL_SIGNAL in the behaviour spec"),
    ]
    for spec, message in cases:
        with pytest.raises(InvalidArgument) as info:
            check_demo_matches_spec(demo_spec, spec, "f")
        assert str(info.value) == message
    with pytest.raises(InvalidArgument, match="^demo_path: continuous actions: 2 in the demonstration, 1 in the behaviour$"):
        load_demonstration(tmp_path / "d.demo", BehaviorSpec(ok.observations, ActionSpec(1, (3,))))


def test_load_errors_are_invalid_argument(tmp_path):
    with pytest.raises(InvalidArgument, match="no demonstration file or directory"):
        load_demonstration(tmp_path / "missing.demo")
    (tmp_path / "bad.demo").write_bytes(b"\x05\x08")
    with pytest.raises(InvalidArgument, match=r"^demo_path: bad.demo: byte 0: the DemonstrationMeta record claims 5 bytes but only 1 remain"):
        load_demonstration(tmp_path / "bad.demo")


def test_goal_signal_and_legacy_discrete_actions(tmp_path):
    meta = dpb.DemonstrationMetaProto(api_version=0, number_steps=2)
    head = _delimited(meta)
    brain = dpb.BrainParametersProto(vector_action_size_deprecated=[4], vector_action_space_type_deprecated=dpb.SPACE_TYPE_DISCRETE)
    body = _delimited(brain)
    for t in range(2):
        body += _delimited(dpb.AgentInfoActionPairProto(
            agent_info=dpb.AgentInfoProto(reward=1.0, done=t == 1, observations=[
                dpb.ObservationProto(shape=[2], observation_type=dpb.OBSERVATION_TYPE_GOAL_SIGNAL, name="goal",
                                     float_data=dpb.ObservationProto.FloatData(data=[1, 2]))]),
            action_info=dpb.AgentActionProto(vector_actions_deprecated=[3.0])))
    (tmp_path / "old.demo").write_bytes(head + bytes(META_AREA_BYTES - len(head)) + body)
    demo = load_demonstration(tmp_path / "old.demo")
    assert demo.spec == BehaviorSpec((ObservationSpec("goal", (2,), pb.OBSERVATION_KIND_VECTOR, pb.OBSERVATION_TYPE_GOAL_SIGNAL),), ActionSpec(0, (4,)))
    assert demo.trajectories[0].discrete_actions.tolist() == [[3]]
