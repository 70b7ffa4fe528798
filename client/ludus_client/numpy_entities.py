"""numpy twins of the service's entity encoder (ludus_service.entities) and goal hyper-layer
(ludus_service.goals), evaluated from a policy's exported weights and descriptions. No torch."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ludus_client.numpy_encoders import linear, swish

POOL_EPSILON = 1e-7
MASKED_SCORE = -1e6
LAYER_NORM_EPSILON = 1e-5  # torch's layer_norm default


def _layer_norm(x: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPSILON)


def _linear(x: np.ndarray, tensors: Dict[str, np.ndarray], name: str) -> np.ndarray:
    return linear(x, tensors[f"{name}.weight"], tensors[f"{name}.bias"])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def entity_encoder_forward(description: dict, tensors: Dict[str, np.ndarray], entities: np.ndarray, x_self: np.ndarray) -> np.ndarray:
    """entities [N, E, entity_size] (all-zero rows are padding), x_self [N, self_size] -> [N, embedding_size]."""
    p = description["prefix"]
    entities = np.asarray(entities, dtype=np.float32)
    n, count, _ = entities.shape
    present = np.abs(entities).sum(axis=-1) > 0
    if description["self_size"]:
        entities = np.concatenate([np.broadcast_to(x_self[:, None, :], (n, count, x_self.shape[1])), entities], axis=-1)
    x = _layer_norm(swish(_linear(entities, tensors, f"{p}.embed")))
    heads = description["num_heads"]
    size = description["embedding_size"] // heads

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(n, count, heads, size).transpose(0, 2, 1, 3)

    q, k, v = (split(_linear(x, tensors, f"{p}.{name}")) for name in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(size)
    scores = np.where(present[:, None, None, :], scores, MASKED_SCORE)
    attended = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(n, count, description["embedding_size"])
    y = _layer_norm(_linear(attended, tensors, f"{p}.out") + x)
    weights = present[..., None].astype(np.float32)
    return ((y * weights).sum(axis=1) / (weights.sum(axis=1) + POOL_EPSILON)).astype(np.float32)


def hyper_linear_forward(description: dict, tensors: Dict[str, np.ndarray], x: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """x [N, input_size], goal [N, goal_size] -> [N, output_size] (no activation)."""
    h = np.asarray(goal, dtype=np.float32)
    for name in description["hidden_layers"]:
        h = swish(_linear(h, tensors, name))
    w = _linear(_layer_norm(h), tensors, f"{description['prefix']}.weights")
    w = w.reshape(len(x), description["input_size"], description["output_size"])
    return (np.einsum("ni,nio->no", x, w) + tensors[f"{description['prefix']}.bias"]).astype(np.float32)
