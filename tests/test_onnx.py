"""ONNX policies (ML-Agents' model contract, export version 3): the exported graph, run by
onnxruntime, computes what the torch actor computes, for every kind of policy this code base has;
the service serves it (GetPolicy / WatchPolicy with POLICY_FORMAT_ONNX, exported once per version);
OnnxPolicy acts like LocalPolicy."""
from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys
from typing import Dict, Optional, Tuple

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ludus.v1 import trainer_pb2 as pb
from ludus_client import BehaviorSpec as ClientSpec
from ludus_client import LocalPolicy
from ludus_client.onnx_policy import OnnxPolicy
from ludus_service.networks import Actor, ObservationEncoder, masked_logits
from ludus_service.onnx_export import (
    CONTINUOUS_LOG_STD, CONTINUOUS_MEAN, DISCRETE_LOG_PROBS, MODEL_EXPORT_VERSION, OPSET,
    actor_from_tensors, export_onnx, export_snapshot,
)
from ludus_service.settings import MemorySettings, NetworkSettings
from ludus_service.spec import ActionSpec, BehaviorSpec, ObservationSpec

ROOT = pathlib.Path(__file__).resolve().parents[1]
VEC, IMG, ENT = pb.OBSERVATION_KIND_VECTOR, pb.OBSERVATION_KIND_VISUAL, pb.OBSERVATION_KIND_ENTITIES
GOAL = pb.OBSERVATION_TYPE_GOAL_SIGNAL


def _spec(observations, continuous: int = 0, branches: Tuple[int, ...] = ()) -> BehaviorSpec:
    return BehaviorSpec(tuple(ObservationSpec(*o) for o in observations), ActionSpec(continuous, branches))


#: name -> (spec, network settings): every policy kind the networks build, kept small.
CASES: Dict[str, Tuple[BehaviorSpec, NetworkSettings]] = {
    "continuous": (_spec([("v", (6,))], 3), NetworkSettings(hidden_units=16)),
    "discrete": (_spec([("v", (5,))], 0, (3, 4, 2)), NetworkSettings(hidden_units=16)),
    "hybrid": (_spec([("v", (5,))], 2, (3, 2)), NetworkSettings(hidden_units=16, activation="tanh")),
    "normalized": (_spec([("a", (3,)), ("b", (2,))], 2, (3,)), NetworkSettings(hidden_units=16, normalize=True)),
    "visual_simple": (_spec([("img", (3, 20, 22), IMG), ("v", (3,))], 0, (3,)), NetworkSettings(hidden_units=16, vis_encode_type="simple")),
    "visual_nature_cnn": (_spec([("img", (1, 36, 36), IMG)], 2), NetworkSettings(hidden_units=16, vis_encode_type="nature_cnn")),
    "visual_resnet": (_spec([("img", (2, 15, 16), IMG)], 1, (2,)), NetworkSettings(hidden_units=16, vis_encode_type="resnet")),
    "visual_match3": (_spec([("img", (2, 5, 6), IMG)], 0, (4,)), NetworkSettings(hidden_units=16, vis_encode_type="match3")),
    "visual_fully_connected": (_spec([("img", (2, 3, 4), IMG)], 2), NetworkSettings(hidden_units=16, vis_encode_type="fully_connected")),
    "entities": (_spec([("v", (4,)), ("ent", (5, 3), ENT)], 1, (2,)), NetworkSettings(hidden_units=16)),
    "goal": (_spec([("v", (4,)), ("goal", (3,), VEC, GOAL)], 2), NetworkSettings(hidden_units=16, goal_conditioning_type="hyper")),
    "recurrent": (_spec([("v", (4,))], 1, (3,)), NetworkSettings(hidden_units=16, memory=MemorySettings(4, 12))),
}
_EXPORTS: Dict[str, Tuple[Actor, bytes, ort.InferenceSession]] = {}


def _make_actor(spec: BehaviorSpec, network: NetworkSettings, seed: int = 0, **options) -> Actor:
    """An actor whose heads are far from their tiny initialisation and whose biases are not zero,
    so wrong wiring shows; hidden weights are perturbed relative to their own scale."""
    torch.manual_seed(seed)
    actor = Actor(spec, network, ObservationEncoder(spec, network.normalize, network.goal_conditioning_type), **options)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            head = name.startswith(("mu.", "log_std", "branch_heads."))
            scale = 0.3 if head or p.dim() < 2 else 0.3 * float(p.std())
            p.add_(torch.randn_like(p) * scale)
        if actor.encoder.normalizer is not None:
            actor.encoder.normalizer.mean.copy_(torch.randn_like(actor.encoder.normalizer.mean))
            actor.encoder.normalizer.var.copy_(torch.rand_like(actor.encoder.normalizer.var) + 0.2)
    return actor.eval()


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _exported(case: str) -> Tuple[Actor, bytes, ort.InferenceSession]:
    if case not in _EXPORTS:
        actor = _make_actor(*CASES[case])
        model = export_onnx(actor, 7, case)
        _EXPORTS[case] = (actor, model, _session(model))
    return _EXPORTS[case]


def _observations(spec: BehaviorSpec, batch: int, rng: np.random.Generator) -> list:
    out = []
    for o in spec.observations:
        if o.kind == IMG:
            out.append(rng.random((batch, *o.shape), dtype=np.float32))
        elif o.kind == ENT:
            x = rng.standard_normal((batch, *o.shape)).astype(np.float32)
            present = rng.integers(0, o.shape[0] + 1, size=batch)  # padding = all-zero entities
            present[0] = 0  # a step that sees no entity at all
            for row, n in enumerate(present):
                x[row, n:] = 0.0
            out.append(x)
        else:
            out.append(rng.standard_normal((batch, *o.shape)).astype(np.float32) * 2.0)
    return out


def _random_masks(branches, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Random allow-masks with at least one allowed option per branch."""
    parts = []
    for size in branches:
        allow = rng.random((batch, size)) < 0.5
        allow[np.arange(batch), rng.integers(0, size, batch)] = True
        parts.append(allow)
    return np.concatenate(parts, axis=1)


def _feeds(actor: Actor, observations, masks: Optional[np.ndarray], memories: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    feeds = {f"obs_{i}": o for i, o in enumerate(observations)}
    batch = len(observations[0])
    if actor.branches:
        feeds["action_masks"] = (masks if masks is not None else np.ones((batch, sum(actor.branches)), bool)).astype(np.float32)
    if actor.memory_size:
        feeds["recurrent_in"] = memories.reshape(batch, 1, actor.memory_size)
    return feeds


def _run(session: ort.InferenceSession, feeds) -> Dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@torch.no_grad()
def _reference(actor: Actor, observations, masks: Optional[np.ndarray], memories: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
    """The torch actor's own pass: trunk -> Gaussian / masked log-softmax per branch -> memories."""
    obs = [torch.from_numpy(o) for o in observations]
    mem = torch.from_numpy(memories) if memories is not None else None
    hidden, final = actor.trunk(obs, mem, 1)
    ref: Dict[str, np.ndarray] = {}
    if actor.continuous_size:
        mu, log_std = actor.gaussian(hidden) if hasattr(actor, "gaussian") else (actor.mu(hidden), actor.log_std.expand(len(hidden), -1))
        ref["mu"], ref["log_std"] = mu.numpy(), log_std.numpy()
    if actor.branches:
        parts, offset = [], 0
        mask = torch.from_numpy(masks) if masks is not None else None
        for head, size in zip(actor.branch_heads, actor.branches):
            branch_mask = mask[:, offset:offset + size] if mask is not None else None
            parts.append(torch.log_softmax(masked_logits(head(hidden), branch_mask), dim=1))
            offset += size
        ref["log_probs"] = torch.cat(parts, dim=1).numpy()
    if final is not None:
        ref["memories"] = final.numpy()
    return ref


def _max_difference(actor: Actor, out: Dict[str, np.ndarray], ref: Dict[str, np.ndarray], masks: Optional[np.ndarray]) -> float:
    """Largest |onnx - torch| over every deterministic quantity; also checks greedy choices."""
    diffs = [0.0]
    if actor.continuous_size:
        diffs.append(np.abs(out[CONTINUOUS_MEAN] - ref["mu"]).max())
        diffs.append(np.abs(out[CONTINUOUS_LOG_STD] - ref["log_std"]).max())
        diffs.append(np.abs(out["deterministic_continuous_actions"] - np.clip(ref["mu"], -3, 3) / 3).max())
    if actor.branches:
        allowed = masks if masks is not None else np.ones_like(ref["log_probs"], dtype=bool)
        diffs.append(np.abs(np.where(allowed, out[DISCRETE_LOG_PROBS] - ref["log_probs"], 0.0)).max())
        assert (out[DISCRETE_LOG_PROBS][~allowed] < -1e7).all()
        offset = 0
        for i, size in enumerate(actor.branches):
            greedy = ref["log_probs"][:, offset:offset + size].argmax(axis=1)
            np.testing.assert_array_equal(out["deterministic_discrete_actions"][:, i], greedy)
            offset += size
    if actor.memory_size:
        diffs.append(np.abs(out["recurrent_out"][:, 0, :] - ref["memories"]).max())
    return float(max(diffs))


# -- the graph --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_contract_names_shapes_and_constants(case):
    actor, model, session = _exported(case)
    spec = actor.spec
    proto = onnx.load_from_string(model)
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ludus.behavior"] == case and meta["ludus.policy_version"] == "7"

    expected_in = [f"obs_{i}" for i in range(len(spec.observations))]
    expected_in += ["action_masks"] if actor.branches else []
    expected_in += ["recurrent_in"] if actor.memory_size else []
    inputs = session.get_inputs()
    assert [i.name for i in inputs] == expected_in
    for i, o in enumerate(spec.observations):  # batch-dynamic, channels-first images
        assert inputs[i].shape == ["batch", *o.shape] and inputs[i].type == "tensor(float)"
    if actor.memory_size:
        assert inputs[-1].shape == ["batch", 1, actor.memory_size]

    names = [o.name for o in session.get_outputs()]
    contract = ["version_number", "memory_size"]
    if actor.continuous_size:
        contract += ["continuous_actions", "continuous_action_output_shape", "deterministic_continuous_actions"]
    if actor.branches:
        contract += ["discrete_actions", "discrete_action_output_shape", "deterministic_discrete_actions"]
    if actor.memory_size:
        contract += ["recurrent_out"]
    assert names[:len(contract)] == contract

    rng = np.random.default_rng(1)
    for batch in (1, 5):  # the batch dimension really is dynamic
        memories = rng.standard_normal((batch, actor.memory_size)).astype(np.float32) if actor.memory_size else None
        out = _run(session, _feeds(actor, _observations(spec, batch, rng), None, memories))
        assert out["version_number"].tolist() == [float(MODEL_EXPORT_VERSION)]
        assert out["memory_size"].tolist() == [float(actor.memory_size)]
        if actor.continuous_size:
            assert out["continuous_action_output_shape"].tolist() == [float(actor.continuous_size)]
            assert out["continuous_actions"].shape == out["deterministic_continuous_actions"].shape == (batch, actor.continuous_size)
            assert out["continuous_actions"].dtype == np.float32 and np.abs(out["continuous_actions"]).max() <= 1.0
        if actor.branches:
            assert out["discrete_action_output_shape"].tolist() == [[float(b) for b in actor.branches]]
            assert out["discrete_actions"].shape == out["deterministic_discrete_actions"].shape == (batch, len(actor.branches))
            assert out["discrete_actions"].dtype == np.int64
            assert ((out["discrete_actions"] >= 0) & (out["discrete_actions"] < np.array(actor.branches))).all()
        if actor.memory_size:
            assert out["recurrent_out"].shape == (batch, 1, actor.memory_size)


@pytest.mark.parametrize("case", list(CASES))
def test_deterministic_outputs_match_the_torch_actor(case):
    actor, _, session = _exported(case)
    rng = np.random.default_rng(2)
    batch = 9
    observations = _observations(actor.spec, batch, rng)
    masks = _random_masks(actor.branches, batch, rng) if actor.branches else None
    memories = rng.standard_normal((batch, actor.memory_size)).astype(np.float32) if actor.memory_size else None
    out = _run(session, _feeds(actor, observations, masks, memories))
    ref = _reference(actor, observations, masks, memories)
    difference = _max_difference(actor, out, ref, masks)
    magnitude = max(float(np.abs(v[v > -1e7]).max()) for v in ref.values())  # masked log-probs left out
    print(f"{case}: max |onnx - torch| = {difference:.2e} (values up to {magnitude:.1f})")
    assert difference < 1e-5


def test_masked_options_are_never_sampled():
    actor, _, session = _exported("discrete")
    rng = np.random.default_rng(3)
    batch = 4000
    observations = _observations(actor.spec, batch, rng)
    masks = _random_masks(actor.branches, batch, rng)
    out = _run(session, _feeds(actor, observations, masks, None))
    offsets = np.cumsum([0, *actor.branches[:-1]])
    for key in ("discrete_actions", "deterministic_discrete_actions"):
        chosen = masks[np.arange(batch)[:, None], offsets[None, :] + out[key]]
        assert chosen.all(), f"{key} picked a masked option"
    # Every allowed option is still reachable: the graph samples, it does not just take the argmax.
    assert (out["discrete_actions"] != out["deterministic_discrete_actions"]).any()


def test_sampled_actions_follow_the_policy_distribution():
    """One observation repeated over many rows: the graph's samples have the actor's statistics."""
    actor = _make_actor(*CASES["hybrid"])
    with torch.no_grad():
        actor.log_std.copy_(torch.log(torch.tensor([0.3, 0.5])))  # samples (almost) never reach the +-3 clip
    session = _session(export_onnx(actor, 1))
    with torch.no_grad():
        rng = np.random.default_rng(4)
        one = _observations(actor.spec, 1, rng)
        rows = 40_000
        observations = [np.repeat(o, rows, axis=0) for o in one]
        out = _run(session, _feeds(actor, observations, None, None))
        ref = _reference(actor, one, None, None)
    mu, std = ref["mu"][0], np.exp(ref["log_std"][0])
    assert (np.abs(mu) + 4 * std < 3.0).all(), "choose weights whose samples are (almost) never clipped"
    samples = out["continuous_actions"] * 3.0  # the graph outputs clamp(a, -3, 3) / 3
    np.testing.assert_allclose(samples.mean(axis=0), mu, atol=5 * std.max() / np.sqrt(rows))
    np.testing.assert_allclose(samples.std(axis=0), std, rtol=0.03)
    assert abs(np.corrcoef(samples.T)[0, 1]) < 0.03  # independent noise per dimension
    offset = 0
    for i, size in enumerate(actor.branches):
        probs = np.exp(ref["log_probs"][0, offset:offset + size])
        offset += size
        frequencies = np.bincount(out["discrete_actions"][:, i], minlength=size) / rows
        np.testing.assert_allclose(frequencies, probs, atol=5 * np.sqrt(0.25 / rows))


def test_recurrent_steps_reproduce_the_torch_lstm_over_a_sequence():
    """Feeding recurrent_out back step by step equals the torch LSTM run over the whole sequence."""
    actor, _, session = _exported("recurrent")
    rng = np.random.default_rng(5)
    agents, steps = 3, 6
    sequence = rng.standard_normal((agents, steps, 4)).astype(np.float32)
    memories = rng.standard_normal((agents, actor.memory_size)).astype(np.float32) * 0.5
    mus, log_probs = [], []
    state = memories
    for t in range(steps):
        out = _run(session, _feeds(actor, [sequence[:, t]], None, state))
        mus.append(out[CONTINUOUS_MEAN])
        log_probs.append(out[DISCRETE_LOG_PROBS])
        state = out["recurrent_out"][:, 0, :]
    with torch.no_grad():  # the trainer's path: rows sequence after sequence, one initial memory each
        hidden, final = actor.trunk([torch.from_numpy(sequence.reshape(agents * steps, 4))], torch.from_numpy(memories), steps)
        mu = actor.mu(hidden).numpy().reshape(agents, steps, -1)
        lp = torch.log_softmax(actor.branch_heads[0](hidden), dim=1).numpy().reshape(agents, steps, -1)
    difference = max(np.abs(state - final.numpy()).max(), np.abs(np.stack(mus, 1) - mu).max(),
                     np.abs(np.stack(log_probs, 1) - lp).max())
    print(f"recurrent over {steps} steps: max |onnx - torch| = {difference:.2e}")
    assert difference < 1e-5


@pytest.mark.parametrize("case", ["hybrid", "visual_resnet", "entities", "goal", "recurrent", "normalized"])
def test_snapshot_tensors_rebuild_the_same_actor(case):
    """What the service exports from (numpy copies) gives the same actor and the same graph outputs."""
    actor, _, session = _exported(case)
    tensors, architecture = actor.export()
    rebuilt = actor_from_tensors(actor.spec, actor.settings, tensors, architecture)
    again, _ = rebuilt.export()
    assert set(again) == set(tensors)
    assert all(np.array_equal(again[k], tensors[k]) for k in tensors)
    rebuilt_session = _session(export_snapshot(actor.spec, actor.settings, tensors, 7, case, architecture))
    rng = np.random.default_rng(6)
    observations = _observations(actor.spec, 4, rng)
    memories = rng.standard_normal((4, actor.memory_size)).astype(np.float32) if actor.memory_size else None
    feeds = _feeds(actor, observations, None, memories)
    original, copy = _run(session, feeds), _run(rebuilt_session, feeds)
    for name in original:
        if not name.startswith("continuous_actions") and name != "discrete_actions":  # sampled outputs differ
            np.testing.assert_array_equal(original[name], copy[name], err_msg=name)


def test_tensors_of_another_actor_are_refused():
    actor, _, _ = _exported("continuous")
    tensors, _ = actor.export()
    other_spec, network = CASES["hybrid"]
    with pytest.raises(ValueError, match="policy tensor"):
        actor_from_tensors(other_spec, network, tensors)
    del tensors["continuous.mu.bias"]
    with pytest.raises(ValueError, match="mu.bias"):
        actor_from_tensors(actor.spec, actor.settings, tensors)


@pytest.mark.parametrize("case", ["continuous", "recurrent"])
def test_tanh_squashed_policy_with_conditional_sigma(case):
    """ML-Agents' SAC options: actions tanh(u), state-dependent log-std (recurrent SAC too)."""
    spec, network = CASES[case]
    actor = _make_actor(spec, network, conditional_sigma=True, tanh_squash=True)
    tensors, architecture = actor.export()
    model = export_snapshot(spec, network, tensors, 1, "sac", architecture)
    session = _session(model)
    rng = np.random.default_rng(7)
    observations = _observations(spec, 8, rng)
    memories = rng.standard_normal((8, actor.memory_size)).astype(np.float32) * 0.5 if actor.memory_size else None
    out = _run(session, _feeds(actor, observations, None, memories))
    ref = _reference(actor, observations, None, memories)
    assert np.abs(out[CONTINUOUS_LOG_STD] - ref["log_std"]).max() < 1e-5
    assert np.abs(out["deterministic_continuous_actions"] - np.tanh(ref["mu"])).max() < 1e-5
    assert (np.abs(out["continuous_actions"]) <= 1.0).all() and np.abs(out["continuous_actions"]).max() > 1 / 3
    if memories is not None:
        assert np.abs(out["recurrent_out"][:, 0, :] - ref["memories"]).max() < 1e-5
    local = LocalPolicy(tensors, architecture, 1)
    onnx_policy = OnnxPolicy.from_bytes(model)
    a = local.act(observations, rng=np.random.default_rng(0), memories=memories)
    b = onnx_policy.act(observations, rng=np.random.default_rng(0), memories=memories)
    np.testing.assert_allclose(b.continuous_actions, a.continuous_actions, atol=1e-5)
    np.testing.assert_allclose(b.continuous_log_probs, a.continuous_log_probs, atol=1e-4)
    if memories is not None:
        np.testing.assert_allclose(b.memories, a.memories, atol=1e-5)
        np.testing.assert_allclose(a.memories, ref["memories"], atol=1e-5)


# -- OnnxPolicy (the SDK) ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["hybrid", "normalized", "visual_simple", "entities", "goal", "recurrent"])
def test_onnx_policy_acts_like_local_policy(case):
    actor, model, _ = _exported(case)
    tensors, architecture = actor.export()
    local, onnx_policy = LocalPolicy(tensors, architecture, 7, case), OnnxPolicy.from_bytes(model)
    assert (onnx_policy.version, onnx_policy.behavior_name, onnx_policy.memory_size) == (7, case, local.memory_size)
    rng = np.random.default_rng(8)
    observations = _observations(actor.spec, 6, rng)
    for i, o in enumerate(actor.spec.observations):  # uint8 frames: both scale them by 1/255
        if o.kind == IMG:
            observations[i] = (observations[i] * 255).astype(np.uint8)
    masks = _random_masks(actor.branches, 6, rng) if actor.branches else None
    memories = rng.standard_normal((6, local.memory_size)).astype(np.float32) if local.recurrent else None
    for deterministic in (True, False):
        a = local.act(observations, masks, deterministic, np.random.default_rng(9), memories)
        b = onnx_policy.act(observations, masks, deterministic, np.random.default_rng(9), memories)
        np.testing.assert_array_equal(b.discrete_actions, a.discrete_actions)
        np.testing.assert_allclose(b.continuous_actions, a.continuous_actions, atol=1e-5)
        np.testing.assert_allclose(b.continuous_log_probs, a.continuous_log_probs, atol=1e-4)
        np.testing.assert_allclose(b.discrete_log_probs, a.discrete_log_probs, atol=1e-4)
        np.testing.assert_allclose(b.env_continuous_actions, a.env_continuous_actions, atol=1e-5)
        if local.recurrent:
            np.testing.assert_allclose(b.memories, a.memories, atol=1e-5)


def test_onnx_policy_rejects_bad_memories_and_observation_counts():
    actor, model, _ = _exported("recurrent")
    policy = OnnxPolicy.from_bytes(model)
    obs = [np.zeros((2, 4), np.float32)]
    with pytest.raises(ValueError, match="recurrent"):
        policy.act(obs)
    with pytest.raises(ValueError, match=r"memories must have shape \[2, 12\]"):
        policy.act(obs, memories=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="takes 1 observations"):
        policy.act(obs * 2, memories=policy.initial_memories(2))


def test_onnx_policy_without_onnxruntime_says_what_to_install(monkeypatch):
    _, model, _ = _exported("continuous")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r"ludus\[onnx\]"):
        OnnxPolicy.from_bytes(model)


def test_onnx_policy_runs_without_torch(tmp_path):
    """The SDK side needs onnxruntime and numpy only."""
    actor, model, session = _exported("hybrid")
    (tmp_path / "policy.onnx").write_bytes(model)
    observations = _observations(actor.spec, 3, np.random.default_rng(11))
    np.save(tmp_path / "obs.npy", observations[0])
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import numpy as np, pathlib\n"
        "from ludus_client.onnx_policy import OnnxPolicy\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "out = OnnxPolicy.from_bytes((d / 'policy.onnx').read_bytes()).act([np.load(d / 'obs.npy')], deterministic=True)\n"
        "np.save(d / 'mu.npy', out.continuous_actions)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    expected = _run(session, _feeds(actor, observations, None, None))[CONTINUOUS_MEAN]
    np.testing.assert_allclose(np.load(tmp_path / "mu.npy"), expected, atol=1e-6)


# -- the service ------------------------------------------------------------------------------------

def _register(client, name: str = "Onnx") -> ClientSpec:
    spec = ClientSpec.vector(obs_size=4, continuous_size=2, discrete_branches=[3, 2])
    client.register(name, spec, settings={"network_settings": {"hidden_units": 16, "normalize": True},
                                          "hyperparameters": {"buffer_size": 64, "batch_size": 32}})
    return spec


def test_get_policy_onnx_is_exported_once_and_runs(client, server):
    _register(client)
    blob = client.get_policy("Onnx", format="onnx")
    assert blob.format == "onnx" and blob.version == 1
    assert hashlib.sha256(blob.data).hexdigest() == blob.sha256
    session = _session(blob.data)
    assert [i.name for i in session.get_inputs()] == ["obs_0", "action_masks"]
    assert client.get_policy("Onnx", format="onnx").data == blob.data  # cached: the same bytes again
    snapshot = server.registry.get("Onnx").store.get(0)
    assert snapshot.onnx() is snapshot.onnx()  # exported once per version

    local, onnx_policy = client.get_local_policy("Onnx"), client.get_onnx_policy("Onnx")
    assert isinstance(onnx_policy, OnnxPolicy) and onnx_policy.version == local.version
    observations = [np.random.default_rng(10).standard_normal((16, 4)).astype(np.float32)]
    a, b = local.act(observations, deterministic=True), onnx_policy.act(observations, deterministic=True)
    np.testing.assert_array_equal(b.discrete_actions, a.discrete_actions)
    np.testing.assert_allclose(b.continuous_actions, a.continuous_actions, atol=1e-5)
    engine = onnx_policy.run(observations)  # what a game engine reads
    np.testing.assert_allclose(engine["deterministic_continuous_actions"], a.env_continuous_actions, atol=1e-5)
    np.testing.assert_array_equal(engine["deterministic_discrete_actions"], a.discrete_actions)
    # The safetensors format is unaffected.
    assert client.get_policy("Onnx").format == "safetensors"


def test_unknown_policy_format_is_invalid_argument(client):
    _register(client)
    for request in (pb.GetPolicyRequest(behavior_name="Onnx", format=7),):
        with pytest.raises(grpc.RpcError) as err:
            list(client.stub.GetPolicy(request, timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        next(iter(client.stub.WatchPolicy(pb.WatchPolicyRequest(behavior_name="Onnx", format=9), timeout=10)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "format" in err.value.details()


def test_watch_policy_onnx_pushes_each_new_version(client, server):
    _register(client)
    first = client.get_policy("Onnx", format="onnx")
    watch = client.watch_policy("Onnx", format="onnx")
    announcements = client.watch_policy("Onnx", format="onnx", versions_only=True)
    try:
        current = next(watch)
        assert (current.version, current.format, current.data) == (1, "onnx", first.data)
        announced = next(announcements)
        assert (announced.version, announced.sha256, announced.data) == (1, first.sha256, b"")
        store = server.registry.get("Onnx").store
        tensors, architecture = store.get(0).tensors, store.get(0).architecture
        changed = {k: v + 0.25 if k.startswith("continuous.mu") else v for k, v in tensors.items()}
        store.publish(2, 100, changed, architecture)  # what the learner does after an update
        pushed = next(watch)
        assert pushed.version == 2 and pushed.format == "onnx" and pushed.data != first.data
        assert hashlib.sha256(pushed.data).hexdigest() == pushed.sha256
        assert next(announcements).sha256 == pushed.sha256
        obs = [np.ones((1, 4), np.float32)]
        mu = OnnxPolicy.from_bytes(pushed.data).act(obs, deterministic=True).continuous_actions
        expected = LocalPolicy(changed, architecture, 2).act(obs, deterministic=True).continuous_actions
        np.testing.assert_allclose(mu, expected, atol=1e-5)
    finally:
        watch.cancel()
        announcements.cancel()


# -- a trained policy -------------------------------------------------------------------------------

@pytest.mark.learning
def test_trained_cartpole_scores_the_same_under_onnxruntime(server):
    """Train CartPole through the real server, then play greedy episodes with the Python policy and
    with onnxruntime alone on the same seeds: the same actions, step for step, the same returns."""
    gym = pytest.importorskip("gymnasium")
    from ludus_client import LudusClient
    from ludus_client.gym_runner import load_behavior_settings, run

    settings = load_behavior_settings(str(ROOT / "configs/cartpole.yaml"), "CartPole-v1")
    # The simulator side acts with the ONNX model (ludus-gym --policy-format onnx) while training.
    result = run("CartPole-v1", f"127.0.0.1:{server.port}", steps=60_000, num_envs=8, behavior_name="CartPole-v1",
                 settings=settings, seed=0, target_return=195.0, window=20, progress=False, policy_format="onnx")
    assert result.solved
    with LudusClient(f"127.0.0.1:{server.port}") as client:
        local = client.get_local_policy("CartPole-v1")
        model = client.get_policy("CartPole-v1", version=local.version, format="onnx").data
    onnx_policy = OnnxPolicy.from_bytes(model)
    assert local.version == onnx_policy.version

    class EngineView:
        """onnxruntime alone, as Unity's inference engine uses the model: obs_0 and action_masks in,
        deterministic_discrete_actions out. No Ludus code on this path."""

        def __init__(self, data: bytes) -> None:
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def act(self, observations, deterministic=True):
            (actions,) = self.session.run(["deterministic_discrete_actions"], {
                "obs_0": observations[0], "action_masks": np.ones((len(observations[0]), 2), np.float32)})
            return type("Out", (), {"discrete_actions": np.asarray(actions)})

    def play(policy, seed: int) -> Tuple[float, list]:
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        total, actions, done = 0.0, [], False
        while not done:
            action = int(policy.act([obs[None].astype(np.float32)], deterministic=True).discrete_actions[0, 0])
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        env.close()
        return total, actions

    returns = []
    for seed in range(5):
        python_return, python_actions = play(local, seed)
        onnx_return, onnx_actions = play(onnx_policy, seed)
        engine_return, engine_actions = play(EngineView(model), seed)
        assert onnx_actions == python_actions == engine_actions and onnx_return == python_return == engine_return
        returns.append(onnx_return)
    print(f"greedy returns on seeds 0-4 (python == onnxruntime): {returns}")
    # Trained to a sampled-action mean of 195; greedy play is not guaranteed that high, but a random
    # policy averages about 22: this is the trained policy, and both runtimes play it identically.
    assert np.mean(returns) >= 100.0
