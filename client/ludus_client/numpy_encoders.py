"""Visual encoders in numpy: replays what ludus_service.encoders computes, without torch.

The service exports each encoder as named float32 arrays plus a description whose "layers" list is
a small program (conv2d, max_pool2d, leaky_relu, swish, relu, residual, flatten, linear). Evaluating
that program rather than hard-coding the five architectures keeps the two sides from drifting: a
layer the service adds shows up in the description, and an op this module does not know is an error
instead of a silently different network. Images are channels-first, [N, C, H, W].
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

DESCRIPTION_FORMAT = "ludus.visual_encoder.v1"
VISUAL_ENCODER_TYPES = ("simple", "nature_cnn", "resnet", "match3", "fully_connected")

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _pad_hw(x: np.ndarray, padding: Tuple[int, int], value: float) -> np.ndarray:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(x: np.ndarray, kernel: Tuple[int, int], stride: Tuple[int, int]) -> np.ndarray:
    """[N, C, H', W', kh, kw] strided view of every kernel position (no copy until used)."""
    view = sliding_window_view(x, kernel, axis=(2, 3))
    return view[:, :, :: stride[0], :: stride[1]]


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: IntPair = 1, padding: IntPair = 0) -> np.ndarray:
    """torch.nn.functional.conv2d for NCHW input, [O, C, kh, kw] weight, zero padding, no dilation."""
    kh, kw = weight.shape[2:]
    windows = _windows(_pad_hw(x, _pair(padding), 0.0), (kh, kw), _pair(stride))
    out = np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3]))  # [N, H', W', O]
    out += bias
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def max_pool2d(x: np.ndarray, kernel: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0) -> np.ndarray:
    """torch's MaxPool2d (ceil_mode off): padding is -inf so it never wins a window."""
    kernel = _pair(kernel)
    stride = kernel if stride is None else _pair(stride)
    windows = _windows(_pad_hw(x, _pair(padding), -np.inf), kernel, stride)
    return windows.max(axis=(4, 5))


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return np.where(x >= 0, x, x * np.float32(negative_slope))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def swish(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), via tanh so large negative inputs do not overflow exp."""
    return x * (np.float32(0.5) * (np.float32(1.0) + np.tanh(np.float32(0.5) * x)))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """torch.nn.Linear: weight is [out, in]."""
    return x @ weight.T + bias


def _run(layers: Sequence[dict], tensors: Dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    for layer in layers:
        op = _OPS.get(layer.get("op"))
        if op is None:
            raise ValueError(f"unknown visual encoder op {layer.get('op')!r}")
        x = op(layer, tensors, x)
    return x


Op = Callable[[dict, Dict[str, np.ndarray], np.ndarray], np.ndarray]
_OPS: Dict[str, Op] = {
    "conv2d": lambda l, t, x: conv2d(x, t[l["weight"]], t[l["bias"]], l["stride"], l["padding"]),
    "max_pool2d": lambda l, t, x: max_pool2d(x, l["kernel"], l["stride"], l["padding"]),
    "leaky_relu": lambda l, t, x: leaky_relu(x, l.get("negative_slope", 0.01)),
    "swish": lambda l, t, x: swish(x),
    "relu": lambda l, t, x: relu(x),
    "flatten": lambda l, t, x: x.reshape(x.shape[0], -1),
    "linear": lambda l, t, x: linear(x, t[l["weight"]], t[l["bias"]]),
    "residual": lambda l, t, x: x + _run(l["layers"], t, x),
}


def visual_encoder_forward(description: dict, tensors: Dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Encode a batch of images [N, C, H, W] into float32 features [N, output_size]."""
    if description.get("format") != DESCRIPTION_FORMAT:
        raise ValueError(f"unsupported visual encoder description format {description.get('format')!r}")
    if description.get("type") not in VISUAL_ENCODER_TYPES:
        raise ValueError(f"unknown visual encoder type {description.get('type')!r}")
    x = np.asarray(x, dtype=np.float32)
    shape = tuple(description["shape"])
    if x.ndim != 4 or x.shape[1:] != shape:
        raise ValueError(f"expected input [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    out = _run(description["layers"], weights, x)
    return out.astype(np.float32, copy=False)
