"""Actor and critic networks, ML-Agents style.

- ObservationEncoder (shared by actor and critic): concatenates the vector observations, normalised
  when `network_settings.normalize` (ML-Agents normalises vector observations only).
- ObservationFeatures (one per network, like ML-Agents' separate actor/critic bodies): the shared
  vector part plus the network's own visual encoder (`vis_encode_type`, output `hidden_units`) for
  every visual observation and entity encoder (ludus_service.entities, conditioned on the vector
  part) for every ENTITIES observation, concatenated: [vectors, visual_0, ..., entities_0, ...].
- Goal conditioning: GOAL_SIGNAL observations are vector inputs like any other; with
  `goal_conditioning_type: hyper` the body's last layer is, in addition, a HyperLinear of them
  (ludus_service.goals), as in ML-Agents.
- MLP body: `num_layers` x `hidden_units` with the configured activation (swish by default).
- Actor: a Gaussian for the continuous block (state-independent log-std) and one categorical per
  discrete branch, with action masks; log-probabilities are returned per action dimension
  (continuous dims and discrete branches side by side), as ML-Agents' PPO ratio expects.
- Critic: its own body and one value head per reward signal.

The actor's weights are what clients run locally, so `export_actor` describes them as plain named
arrays plus a JSON architecture that the torch-free SDK evaluates (ludus_client.policy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ludus.v1 import trainer_pb2 as pb
from ludus_service.encoders import make_visual_encoder
from ludus_service.entities import EntityEncoder
from ludus_service.goals import HyperLinear
from ludus_service.normalizer import RunningNormalizer
from ludus_service.settings import NetworkSettings
from ludus_service.spec import BehaviorSpec

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_ACTIVATIONS = {"swish": nn.SiLU, "tanh": nn.Tanh, "relu": nn.ReLU}


def _init_linear(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights, zero bias: the initialisation CleanRL and SB3 use for PPO."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ObservationEncoder(nn.Module):
    """Flattens and concatenates the vector observations, normalising them when asked to. Holds the
    running normaliser, which actor and critic share (statistics, not trained weights), and knows
    which observations are images, entity sets and (for hyper conditioning) goals."""

    def __init__(self, spec: BehaviorSpec, normalize: bool, goal_conditioning_type: str = "none") -> None:
        super().__init__()
        observations = spec.observations
        self.goal_indices = [i for i, o in enumerate(observations)
                             if o.observation_type == pb.OBSERVATION_TYPE_GOAL_SIGNAL and goal_conditioning_type == "hyper"]
        # Goals stay body inputs too (as in ML-Agents); with hyper conditioning they also make the
        # last layer's weights.
        self.vector_indices = [i for i, o in enumerate(observations) if o.kind == pb.OBSERVATION_KIND_VECTOR]
        self.visual_indices = [i for i, o in enumerate(observations) if o.kind == pb.OBSERVATION_KIND_VISUAL]
        self.entity_indices = [i for i, o in enumerate(observations) if o.kind == pb.OBSERVATION_KIND_ENTITIES]
        self.sizes = [int(np.prod(observations[i].shape)) for i in self.vector_indices]
        self.output_size = sum(self.sizes)
        self.goal_size = sum(int(np.prod(observations[i].shape)) for i in self.goal_indices)
        self.normalizer: Optional[RunningNormalizer] = (
            RunningNormalizer(self.output_size) if normalize and self.output_size else None
        )

    def goals(self, observations: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
        """[N, goal_size] for hyper conditioning, None without goals."""
        if not self.goal_indices:
            return None
        return torch.cat([observations[i].reshape(observations[i].shape[0], -1).float() for i in self.goal_indices], dim=1)

    def concat(self, observations: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, sum of vector sizes] (an empty [N, 0] when there are only visual observations)."""
        flat = [observations[i].reshape(observations[i].shape[0], -1).float() for i in self.vector_indices]
        if not flat:
            return observations[0].new_zeros((observations[0].shape[0], 0), dtype=torch.float32)
        return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)

    def forward(self, observations: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.concat(observations)
        return self.normalizer(x) if self.normalizer is not None else x


class ObservationFeatures(nn.Module):
    """The input of one network: the shared vector part (computed by the ObservationEncoder, which
    is not a submodule here, so its normaliser is stored once) + this network's own visual and
    entity encoders."""

    def __init__(self, spec: BehaviorSpec, settings: NetworkSettings, encoder: ObservationEncoder) -> None:
        super().__init__()
        self.vector_size = encoder.output_size
        self.visual_indices = list(encoder.visual_indices)
        self.entity_indices = list(encoder.entity_indices)
        self.visual_encoders = nn.ModuleList(
            make_visual_encoder(settings.vis_encode_type, spec.observations[i].shape, settings.hidden_units)
            for i in self.visual_indices
        )
        self.entity_encoders = nn.ModuleList(
            EntityEncoder(spec.observations[i].shape[1], spec.observations[i].shape[0], self.vector_size)
            for i in self.entity_indices
        )
        self.output_size = (self.vector_size + sum(e.output_size for e in self.visual_encoders)
                            + sum(e.output_size for e in self.entity_encoders))

    def forward(self, observations: Sequence[torch.Tensor], vectors: torch.Tensor) -> torch.Tensor:
        parts = [vectors] if self.vector_size else []
        for index, visual in zip(self.visual_indices, self.visual_encoders):
            parts.append(visual(observations[index].float()))
        for index, entities in zip(self.entity_indices, self.entity_encoders):
            parts.append(entities(observations[index].float(), vectors))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def export(self) -> Tuple[Dict[str, np.ndarray], List[dict], List[dict]]:
        """Visual and entity encoder weights and descriptions (observation index included) for the SDK."""
        tensors: Dict[str, np.ndarray] = {}
        visual_described, entity_described = [], []
        for k, (index, visual) in enumerate(zip(self.visual_indices, self.visual_encoders)):
            weights, description = visual.export(f"visual.{k}")
            tensors.update(weights)
            visual_described.append({"observation": index, **description})
        for k, (index, entities) in enumerate(zip(self.entity_indices, self.entity_encoders)):
            weights, description = entities.export(f"entities.{k}")
            tensors.update(weights)
            entity_described.append({"observation": index, **description})
        return tensors, visual_described, entity_described


def mlp(in_size: int, settings: NetworkSettings, num_layers: Optional[int] = None) -> Tuple[nn.Sequential, int]:
    layers: List[nn.Module] = []
    size = in_size
    for _ in range(settings.num_layers if num_layers is None else num_layers):
        layers += [_init_linear(nn.Linear(size, settings.hidden_units), math.sqrt(2)), _ACTIVATIONS[settings.activation]()]
        size = settings.hidden_units
    return nn.Sequential(*layers), size


class Memory(nn.Module):
    """ML-Agents' recurrent layer: an LSTM with hidden size memory_size / 2 after the body; a memory
    is concat(h, c). Runs whole sequences: rows arrive sequence after sequence, each sequence starts
    from its own given memory."""

    def __init__(self, input_size: int, memory_size: int) -> None:
        super().__init__()
        self.memory_size = memory_size
        self.output_size = memory_size // 2
        self.lstm = nn.LSTM(input_size, self.output_size, batch_first=True)

    def forward(self, x: torch.Tensor, memories: torch.Tensor, sequence_length: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [S * L, in], memories [S, memory_size] -> outputs [S * L, memory_size / 2], final memories [S, memory_size]."""
        sequences = memories.shape[0]
        x = x.reshape(sequences, sequence_length, x.shape[-1])
        h0, c0 = memories.reshape(sequences, 2, self.output_size).permute(1, 0, 2).contiguous()
        out, (h, c) = self.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return out.reshape(sequences * sequence_length, self.output_size), torch.cat([h[0], c[0]], dim=1)

    def export(self, prefix: str) -> Dict[str, np.ndarray]:
        return {f"{prefix}.{name}": value.detach().cpu().numpy() for name, value in self.lstm.named_parameters()
                if name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")}


def body_layers(in_size: int, settings: NetworkSettings, goal_size: int) -> Tuple[nn.Sequential, Optional[HyperLinear], int]:
    """The MLP body; with goals (hyper conditioning) its last layer is a HyperLinear of the goal.
    Without layers (num_layers 0) there is nothing to condition: goals are then ignored."""
    if not goal_size or settings.num_layers == 0:
        body, size = mlp(in_size, settings)
        return body, None, size
    body, size = mlp(in_size, settings, settings.num_layers - 1)
    return body, HyperLinear(size, settings.hidden_units, goal_size, settings.hidden_units), settings.hidden_units


def recurrent_layer(input_size: int, settings: NetworkSettings) -> Tuple[Optional[Memory], int]:
    if settings.memory is None:
        return None, input_size
    memory = Memory(input_size, settings.memory.memory_size)
    return memory, memory.output_size


@dataclass
class ActionEvaluation:
    continuous_log_probs: torch.Tensor  # [N, continuous_size]
    discrete_log_probs: torch.Tensor  # [N, num_branches]
    entropy: torch.Tensor  # [N], joint entropy (sum over dims and branches)


def masked_logits(logits: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Masked options get (effectively) zero probability."""
    if mask is None:
        return logits
    return logits.masked_fill(~mask, -1e8)


class Trunk(nn.Module):
    """What actor and critic share in structure (each with its own weights): observation features ->
    MLP body -> goal hyper-layer (hyper conditioning) -> LSTM (recurrent networks)."""

    def __init__(self, spec: BehaviorSpec, settings: NetworkSettings, encoder: ObservationEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.features = ObservationFeatures(spec, settings, encoder)
        self.body, self.goal_layer, hidden = body_layers(self.features.output_size, settings, encoder.goal_size)
        self.activation = _ACTIVATIONS[settings.activation]()
        self.memory, self.hidden_size = recurrent_layer(hidden, settings)

    @property
    def memory_size(self) -> int:
        return self.memory.memory_size if self.memory is not None else 0

    def trunk(self, observations: Sequence[torch.Tensor], memories: Optional[torch.Tensor],
              sequence_length: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Hidden state of every row, and for recurrent networks the memories after each sequence."""
        hidden = self.body(self.features(observations, self.encoder(observations)))
        if self.goal_layer is not None:
            hidden = self.activation(self.goal_layer(hidden, self.encoder.goals(observations)))
        final = None
        if self.memory is not None:
            hidden, final = self.memory(hidden, memories, sequence_length)
        return hidden, final


def squash_correction(unsquashed: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2), computed stably as 2 * (log 2 - u - softplus(-2u)): the change of
    variables a = tanh(u) subtracts it from the Gaussian log-density."""
    return 2.0 * (math.log(2.0) - unsquashed - nn.functional.softplus(-2.0 * unsquashed))


class Actor(Trunk):
    """`conditional_sigma` (log-std from a linear head of the hidden state instead of a free
    parameter) and `tanh_squash` (actions tanh(u), log-probs with the tanh correction) are
    ML-Agents' SAC policy options; PPO uses neither."""

    def __init__(self, spec: BehaviorSpec, settings: NetworkSettings, encoder: ObservationEncoder,
                 conditional_sigma: bool = False, tanh_squash: bool = False) -> None:
        super().__init__(spec, settings, encoder)
        self.spec = spec
        self.settings = settings
        hidden = self.hidden_size
        self.continuous_size = spec.actions.continuous_size
        self.branches = list(spec.actions.discrete_branches)
        self.conditional_sigma = conditional_sigma
        self.tanh_squash = tanh_squash
        if self.continuous_size:
            self.mu = _init_linear(nn.Linear(hidden, self.continuous_size), 0.01)
            if conditional_sigma:
                self.log_std_head = _init_linear(nn.Linear(hidden, self.continuous_size), 0.01)
            else:
                self.log_std = nn.Parameter(torch.zeros(self.continuous_size))
        self.branch_heads = nn.ModuleList(_init_linear(nn.Linear(hidden, b), 0.01) for b in self.branches)

    def evaluate(
        self,
        observations: Sequence[torch.Tensor],
        continuous_actions: Optional[torch.Tensor],
        discrete_actions: Optional[torch.Tensor],
        action_masks: Optional[torch.Tensor],
        memories: Optional[torch.Tensor] = None,
        sequence_length: int = 1,
    ) -> ActionEvaluation:
        """Log-probabilities of given actions and the policy's entropy, with gradients. Recurrent
        actors take rows sequence after sequence and each sequence's initial memory [S, memory_size]."""
        hidden, _ = self.trunk(observations, memories, sequence_length)
        n = hidden.shape[0]
        entropy = torch.zeros(n, device=hidden.device)
        cont_lp = torch.zeros(n, 0, device=hidden.device)
        disc_lp = torch.zeros(n, 0, device=hidden.device)
        if self.continuous_size:
            mu, log_std = self.gaussian(hidden)
            # No argument validation: a non-finite mu (from extreme but finite inputs) must reach the
            # optimizer's non-finite check, not raise ValueError here.
            dist = torch.distributions.Normal(mu, log_std.exp(), validate_args=False)
            if self.tanh_squash:  # given actions are tanh(u): log p(a) = log N(u) - log(1 - tanh(u)^2)
                unsquashed = torch.atanh(continuous_actions.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
                cont_lp = dist.log_prob(unsquashed) - squash_correction(unsquashed)
            else:
                cont_lp = dist.log_prob(continuous_actions)
            entropy = entropy + dist.entropy().sum(dim=1)
        if self.branches:
            lps, offset = [], 0
            for i, (head, size) in enumerate(zip(self.branch_heads, self.branches)):
                mask = action_masks[:, offset:offset + size] if action_masks is not None else None
                offset += size
                logits = masked_logits(head(hidden), mask)
                log_p = torch.log_softmax(logits, dim=1)
                lps.append(log_p.gather(1, discrete_actions[:, i:i + 1].long()))
                probs = log_p.exp()
                entropy = entropy - (probs * log_p).sum(dim=1)
            disc_lp = torch.cat(lps, dim=1)
        return ActionEvaluation(cont_lp, disc_lp, entropy)

    def gaussian(self, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std [N, continuous_size] of the (pre-squash) Gaussian."""
        mu = self.mu(hidden)
        if self.conditional_sigma:
            return mu, self.log_std_head(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return mu, self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mu)

    def export(self) -> Tuple[Dict[str, np.ndarray], dict]:
        """Named float32 arrays and the architecture the SDK's numpy forward pass follows."""
        tensors: Dict[str, np.ndarray] = {}
        layers = []
        for idx, module in enumerate(self.body):
            if isinstance(module, nn.Linear):
                name = f"body.{len(layers)}"
                tensors[f"{name}.weight"] = module.weight.detach().cpu().numpy()
                tensors[f"{name}.bias"] = module.bias.detach().cpu().numpy()
                layers.append(name)
        if self.memory is not None:
            tensors.update(self.memory.export("memory"))
        if self.encoder.normalizer is not None:
            tensors["normalizer.mean"] = self.encoder.normalizer.mean.detach().cpu().numpy()
            tensors["normalizer.var"] = self.encoder.normalizer.var.detach().cpu().numpy()
        if self.continuous_size:
            tensors["continuous.mu.weight"] = self.mu.weight.detach().cpu().numpy()
            tensors["continuous.mu.bias"] = self.mu.bias.detach().cpu().numpy()
            if self.conditional_sigma:
                tensors["continuous.log_std.weight"] = self.log_std_head.weight.detach().cpu().numpy()
                tensors["continuous.log_std.bias"] = self.log_std_head.bias.detach().cpu().numpy()
            else:
                tensors["continuous.log_std"] = self.log_std.detach().clamp(LOG_STD_MIN, LOG_STD_MAX).cpu().numpy()
        for i, head in enumerate(self.branch_heads):
            tensors[f"discrete.{i}.weight"] = head.weight.detach().cpu().numpy()
            tensors[f"discrete.{i}.bias"] = head.bias.detach().cpu().numpy()
        feature_tensors, visual, entities = self.features.export()
        tensors.update(feature_tensors)
        goal_layer = None
        if self.goal_layer is not None:
            goal_tensors, goal_layer = self.goal_layer.export("goal_layer")
            tensors.update(goal_tensors)
        architecture = {
            # v1 readers know vector observations only; a policy with visual encoders needs a v2 reader.
            "format": "ludus.actor.v2" if (visual or entities or goal_layer or self.memory is not None
                                           or self.conditional_sigma or self.tanh_squash) else "ludus.mlp_actor.v1",
            "observation_sizes": self.encoder.sizes,
            "vector_observations": self.encoder.vector_indices,
            "observation_shapes": [list(o.shape) for o in self.spec.observations],
            "normalize": self.encoder.normalizer is not None,
            "normalize_clamp": 5.0,
            "normalize_epsilon": 1e-8,
            "activation": self.settings.activation,
            "body_layers": layers,
            "continuous_size": self.continuous_size,
            "discrete_branches": self.branches,
            "deterministic": self.settings.deterministic,
        }
        if visual:
            architecture["visual_encoders"] = visual
        if entities:
            architecture["entity_encoders"] = entities
        if goal_layer is not None:
            architecture["goal_layer"] = goal_layer
            architecture["goal_observations"] = self.encoder.goal_indices
        if self.memory is not None:
            architecture["memory_size"] = self.memory.memory_size
        if self.conditional_sigma:  # log_std = clamp(h @ W.T + b, log_std_min, log_std_max)
            architecture.update(conditional_sigma=True, log_std_min=LOG_STD_MIN, log_std_max=LOG_STD_MAX)
        if self.tanh_squash:  # actions are tanh(u) in (-1, 1), applied unclipped
            architecture["tanh_squash"] = True
        # Copies: .numpy() of a CPU parameter shares its memory, and Adam updates parameters in place,
        # so without a copy a published version's weights would change with later updates.
        return {k: np.array(v, dtype=np.float32, order="C") for k, v in tensors.items()}, architecture


class Critic(Trunk):
    """Own trunk (shared_critic false) and one value head per reward signal."""

    def __init__(self, spec: BehaviorSpec, settings: NetworkSettings, encoder: ObservationEncoder, signals: Sequence[str]) -> None:
        super().__init__(spec, settings, encoder)
        self.heads = nn.ModuleDict({name: _init_linear(nn.Linear(self.hidden_size, 1), 1.0) for name in signals})

    def forward(self, observations: Sequence[torch.Tensor], memories: Optional[torch.Tensor] = None,
                sequence_length: int = 1) -> Dict[str, torch.Tensor]:
        return self.forward_with_memory(observations, memories, sequence_length)[0]

    def forward_with_memory(self, observations: Sequence[torch.Tensor], memories: Optional[torch.Tensor] = None,
                            sequence_length: int = 1) -> Tuple[Dict[str, torch.Tensor], Optional[torch.Tensor]]:
        """Values per signal, and for recurrent critics the memories after each sequence [S, memory_size]."""
        hidden, final = self.trunk(observations, memories, sequence_length)
        return {name: head(hidden).squeeze(-1) for name, head in self.heads.items()}, final
