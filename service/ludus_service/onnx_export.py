"""ONNX export of an actor, following ML-Agents' model contract (model export version 3).

Unity's inference engine (Barracuda, now Sentis) runs ML-Agents policies from an ONNX file whose
tensor names and shapes it knows. We produce the same contract, so a policy trained by Ludus drops
into a Unity project (or any ONNX runtime) with no Python:

inputs
    obs_0 .. obs_{n-1}  float32 [batch, *shape], in the spec's order. Visual observations are
                        channels-first [batch, C, H, W] (NCHW), images in [0, 1]: ML-Agents' own
                        exporter transposes its HWC specs to NCHW because ONNX convolutions are NCHW
                        and Barracuda/Sentis convert to their layout on import; our specs already are
                        CHW. Entity observations are [batch, max_entities, entity_size].
    action_masks        float32 [batch, sum(branches)], 1 = allowed (only with discrete branches).
    recurrent_in        float32 [batch, 1, memory_size], concat(h, c) (only for recurrent policies).
outputs
    version_number      float32 [1] = 3
    memory_size         float32 [1] (0 when not recurrent)
    continuous_actions, continuous_action_output_shape ([1]), deterministic_continuous_actions
                        continuous policies: clamp(a, -3, 3) / 3 of a Gaussian sample (noise from a
                        RandomNormalLike op) and of the mean, as ML-Agents exports them (the action
                        the environment receives). Tanh-squashed (SAC) actors give tanh of the
                        sample and tanh of the mean, unclipped (ML-Agents exports the raw mean as
                        the deterministic action there; tanh(mean) is the action the policy means).
    discrete_actions, discrete_action_output_shape ([1, branches]), deterministic_discrete_actions
                        discrete policies: int64 [batch, branches], sampled (Multinomial op) and
                        argmax, masked options excluded.
    recurrent_out       float32 [batch, 1, memory_size] for recurrent policies.

Ludus adds three outputs of its own (engines that do not know them ignore them), so a runtime can
sample itself and get exact log-probabilities: `ludus_continuous_mean` and
`ludus_continuous_log_std` (raw, unclamped, [batch, c]) and `ludus_discrete_log_probs` (masked
log-softmax of every branch side by side, [batch, sum(branches)]). ludus_client.onnx_policy uses them.

Opset 9, the opset ML-Agents exports with (Barracuda's reference), through torch's TorchScript-based
exporter (`dynamo=False`): the dynamo exporter needs opset 18 or later, which Barracuda cannot read.

Snapshots keep numpy copies of the weights, not the torch module, so `export_snapshot` rebuilds an
Actor from spec, network settings and the exported tensors and checks the round trip.
"""
from __future__ import annotations

import io
import json
import threading
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ludus_service import __version__ as LUDUS_VERSION
from ludus_service.networks import LOG_STD_MAX, LOG_STD_MIN, Actor, ObservationEncoder
from ludus_service.settings import NetworkSettings
from ludus_service.spec import BehaviorSpec

#: ML-Agents' SimpleActor.MODEL_EXPORT_VERSION (ModelApiVersion.MLAgents2_0 in Unity).
MODEL_EXPORT_VERSION = 3
#: ML-Agents' SerializationSettings.onnx_opset.
OPSET = 9
#: Masked logits: logits * mask - MASK_PENALTY * (1 - mask), ML-Agents' Barracuda-friendly form.
MASK_PENALTY = 1e8
#: Our extra outputs (not part of ML-Agents' contract).
CONTINUOUS_MEAN = "ludus_continuous_mean"
CONTINUOUS_LOG_STD = "ludus_continuous_log_std"
DISCRETE_LOG_PROBS = "ludus_discrete_log_probs"

# torch.onnx's TorchScript exporter keeps module-level state (opset, export mode): one export at a
# time, whichever thread asks (ML-Agents guards its exporter with a lock for the same reason).
_EXPORT_LOCK = threading.Lock()


def input_names(spec: BehaviorSpec, memory_size: int) -> List[str]:
    names = [f"obs_{i}" for i in range(len(spec.observations))]
    if spec.actions.discrete_branches:
        names.append("action_masks")
    if memory_size:
        names.append("recurrent_in")
    return names


def output_names(spec: BehaviorSpec, memory_size: int) -> List[str]:
    names = ["version_number", "memory_size"]
    if spec.actions.continuous_size:
        names += ["continuous_actions", "continuous_action_output_shape", "deterministic_continuous_actions"]
    if spec.actions.discrete_branches:
        names += ["discrete_actions", "discrete_action_output_shape", "deterministic_discrete_actions"]
    if memory_size:
        names.append("recurrent_out")
    if spec.actions.continuous_size:
        names += [CONTINUOUS_MEAN, CONTINUOUS_LOG_STD]
    if spec.actions.discrete_branches:
        names.append(DISCRETE_LOG_PROBS)
    return names


class ExportableActor(nn.Module):
    """The actor's inference pass with ML-Agents' inputs and outputs (one step, sequence length 1).

    Masking, sampling and clipping are written with ops that exist at opset 9 (Multinomial,
    RandomNormalLike, Clip) in the same arithmetic ML-Agents uses, so outputs agree with both.
    """

    def __init__(self, actor: Actor) -> None:
        super().__init__()
        self.actor = actor
        self.num_observations = len(actor.spec.observations)
        self.continuous_size = actor.continuous_size
        self.branches = list(actor.branches)
        self.memory_size = actor.memory_size
        self.tanh_squash = bool(getattr(actor, "tanh_squash", False))
        self.conditional_sigma = bool(getattr(actor, "conditional_sigma", False))
        # Constant outputs, as ML-Agents stores them: float tensors.
        self.register_buffer("version_number", torch.tensor([float(MODEL_EXPORT_VERSION)]))
        self.register_buffer("memory_size_vector", torch.tensor([float(self.memory_size)]))
        self.register_buffer("continuous_shape", torch.tensor([float(self.continuous_size)]))
        self.register_buffer("discrete_shape", torch.tensor([[float(b) for b in self.branches]]))

    def _gaussian(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std [batch, c]. A state-independent log-std is broadcast as mu * 0 + log_std
        (ML-Agents' form: Barracuda lacked Expand)."""
        mu = self.actor.mu(hidden)
        if self.conditional_sigma:
            return mu, self.actor.log_std_head(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return mu, mu * 0.0 + self.actor.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def forward(self, *inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        observations = list(inputs[:self.num_observations])
        rest = list(inputs[self.num_observations:])
        masks = rest.pop(0) if self.branches else None
        memories = rest.pop(0).reshape(-1, self.memory_size) if self.memory_size else None
        hidden, memories_out = self.actor.trunk(observations, memories, 1)
        outputs: List[torch.Tensor] = [self.version_number * 1.0, self.memory_size_vector * 1.0]
        extras: List[torch.Tensor] = []
        if self.continuous_size:
            mu, log_std = self._gaussian(hidden)
            sample = mu + torch.randn_like(mu) * torch.exp(log_std)
            if self.tanh_squash:  # ML-Agents' TanhGaussian: the action is tanh(u), never clipped
                env_sample, env_mean = torch.tanh(sample), torch.tanh(mu)
            else:
                env_sample, env_mean = torch.clamp(sample, -3.0, 3.0) / 3.0, torch.clamp(mu, -3.0, 3.0) / 3.0
            outputs += [env_sample, self.continuous_shape * 1.0, env_mean]
            extras += [mu, log_std]
        if self.branches:
            sampled, greedy, log_probs = [], [], []
            offset = 0
            for head, size in zip(self.actor.branch_heads, self.branches):
                allow = masks[:, offset:offset + size]
                offset += size
                logits = head(hidden) * allow - MASK_PENALTY * (1.0 - allow)
                probs = torch.softmax(logits, dim=1)
                sampled.append(torch.multinomial(probs, 1))
                greedy.append(torch.argmax(probs, dim=1, keepdim=True))
                log_probs.append(torch.log_softmax(logits, dim=1))
            outputs += [torch.cat(sampled, dim=1), self.discrete_shape * 1.0, torch.cat(greedy, dim=1)]
            extras.append(torch.cat(log_probs, dim=1))
        if self.memory_size:
            outputs.append(memories_out.reshape(-1, 1, self.memory_size))
        return tuple(outputs + extras)


def example_inputs(spec: BehaviorSpec, memory_size: int, batch: int = 2) -> List[torch.Tensor]:
    """Zero observations, all-allowed masks and zero memories: what the exporter traces with."""
    inputs = [torch.zeros((batch, *o.shape), dtype=torch.float32) for o in spec.observations]
    if spec.actions.discrete_branches:
        inputs.append(torch.ones((batch, sum(spec.actions.discrete_branches)), dtype=torch.float32))
    if memory_size:
        inputs.append(torch.zeros((batch, 1, memory_size), dtype=torch.float32))
    return inputs


def export_onnx(actor: Actor, version: int, behavior_name: str = "") -> bytes:
    """The actor as an ONNX model (bytes) with ML-Agents' contract; `version` goes into metadata."""
    module = ExportableActor(actor).cpu().eval()
    spec = actor.spec
    names_in = input_names(spec, module.memory_size)
    names_out = output_names(spec, module.memory_size)
    dynamic = {name: {0: "batch"} for name in names_in}
    for name in names_out:
        if name not in ("version_number", "memory_size", "continuous_action_output_shape", "discrete_action_output_shape"):
            dynamic[name] = {0: "batch"}
    buffer = io.BytesIO()
    with _EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, tuple(example_inputs(spec, module.memory_size)), buffer, dynamo=False,
                          opset_version=OPSET, input_names=names_in, output_names=names_out, dynamic_axes=dynamic,
                          do_constant_folding=True)
    policy = {  # what ludus_client.onnx_policy needs beyond the graph
        "continuous_size": module.continuous_size,
        "discrete_branches": module.branches,
        "memory_size": module.memory_size,
        "tanh_squash": module.tanh_squash,
        "deterministic": bool(actor.settings.deterministic),
        "observation_shapes": [list(o.shape) for o in spec.observations],
        "visual_observations": list(actor.encoder.visual_indices),
    }
    return _finish(buffer.getvalue(), names_out, {
        "ludus.version": LUDUS_VERSION,
        "ludus.behavior": behavior_name,
        "ludus.policy_version": str(version),
        "ludus.model_export_version": str(MODEL_EXPORT_VERSION),
        "ludus.policy": json.dumps(policy, sort_keys=True),
    })


def _finish(model_bytes: bytes, names_out: Sequence[str], metadata: Mapping[str, str]) -> bytes:
    """Name every output and add our metadata.

    Constant folding turns the constant outputs (version_number, memory_size, *_output_shape) into
    initializers that keep their folded names ("96"); an Identity node gives each its contract name.
    """
    import onnx  # the server extra installs it; only needed here
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    if len(graph.output) != len(names_out):
        raise RuntimeError(f"exported {len(graph.output)} outputs, expected {len(names_out)}")
    for output, name in zip(graph.output, names_out):
        if output.name != name:
            graph.node.append(helper.make_node("Identity", [output.name], [name], name=f"{name}_identity"))
            output.name = name
    model.producer_name = "ludus"
    model.producer_version = LUDUS_VERSION
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


# -- rebuilding an actor from a snapshot ------------------------------------------------------------

def _state_key(name: str, body_linears: Sequence[int]) -> str:
    """The Actor state_dict key of a tensor named by Actor.export()."""
    head, _, rest = name.partition(".")
    if head == "body":
        index, _, param = rest.partition(".")
        return f"body.{body_linears[int(index)]}.{param}"
    if head == "memory":
        return f"memory.lstm.{rest}"
    if head == "normalizer":
        return f"encoder.normalizer.{rest}"
    if head == "continuous":
        if rest.startswith("log_std."):  # conditional sigma: a linear head
            return f"log_std_head.{rest[len('log_std.'):]}"
        return rest  # "mu.weight", "mu.bias", "log_std"
    if head == "discrete":
        return f"branch_heads.{rest}"
    if head == "visual":
        return f"features.visual_encoders.{rest}"
    if head == "entities":
        return f"features.entity_encoders.{rest}"
    if head == "goal_layer":
        return name
    raise KeyError(name)


def actor_from_tensors(spec: BehaviorSpec, network: NetworkSettings, tensors: Mapping[str, np.ndarray],
                       architecture: Optional[Mapping[str, object]] = None) -> Actor:
    """A CPU Actor holding exactly the weights Actor.export() produced (a policy snapshot's tensors);
    `architecture` (the export's description) carries the SAC options (conditional sigma, tanh squash).

    Raises ValueError when the tensors do not describe this architecture (a missing, extra or
    misshapen tensor), so an export never silently runs with initial weights.
    """
    architecture = architecture or {}
    options = {}
    if architecture.get("conditional_sigma") or "continuous.log_std.weight" in tensors:
        options["conditional_sigma"] = True
    if architecture.get("tanh_squash"):
        options["tanh_squash"] = True
    # The throwaway initial weights must not draw from the global torch RNG the learner uses: an
    # export on an RPC thread would otherwise change what a --seed run does.
    with torch.random.fork_rng(devices=[]):
        encoder = ObservationEncoder(spec, network.normalize, network.goal_conditioning_type)
        actor = Actor(spec, network, encoder, **options)
    body_linears = [i for i, m in enumerate(actor.body) if isinstance(m, nn.Linear)]
    state = actor.state_dict()
    loaded: Dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        try:
            key = _state_key(name, body_linears)
        except (KeyError, ValueError, IndexError):
            raise ValueError(f"policy tensor {name!r} does not belong to this actor") from None
        if key not in state or tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"policy tensor {name!r} ({tuple(value.shape)}) does not fit actor parameter {key!r}")
        loaded[key] = torch.from_numpy(np.array(value, dtype=np.float32))
    # The normaliser's sample count only matters for later updates, never for a forward pass.
    missing = [k for k in state if k not in loaded and k != "encoder.normalizer.count"]
    if missing:
        raise ValueError(f"policy tensors lack actor parameters {missing}")
    actor.load_state_dict(loaded, strict=False)
    return actor.eval()


def export_snapshot(spec: BehaviorSpec, network: NetworkSettings, tensors: Mapping[str, np.ndarray],
                    version: int, behavior_name: str = "", architecture: Optional[Mapping[str, object]] = None) -> bytes:
    """ONNX bytes of a published policy version (its numpy tensors), for PolicySnapshot.onnx()."""
    return export_onnx(actor_from_tensors(spec, network, tensors, architecture), version, behavior_name)


def check_round_trip(actor: Actor, rebuilt: Optional[Actor] = None) -> float:
    """Largest absolute difference between an actor's exported tensors and a rebuilt actor's (tests)."""
    original, architecture = actor.export()
    again, _ = (rebuilt or actor_from_tensors(actor.spec, actor.settings, original, architecture)).export()
    assert set(original) == set(again)
    return max(float(np.max(np.abs(original[k] - again[k]))) if original[k].size else 0.0 for k in original)
