"""ML-Agents' five visual encoders (`network_settings.vis_encode_type`), channels-first.

Layer structure follows ML-Agents' `torch_entities/encoders.py` so a config that trains there
trains the same network here:

- simple:          conv 8x8/4 (16) -> conv 4x4/2 (32) -> dense, LeakyReLU after each.
- nature_cnn:      conv 8x8/4 (32) -> conv 4x4/2 (64) -> conv 3x3/1 (64) -> dense, LeakyReLU.
- resnet (IMPALA): three stacks (16, 32, 32) of conv 3x3 pad 1 -> maxpool 3/2 -> 2 residual blocks
                   (swish, conv, swish, conv, + input); swish -> dense -> ReLU.
- match3:          conv 3x3/1 (35) -> conv 3x3/1 (144) -> dense, LeakyReLU (King's Candy Crush CNN).
- fully_connected: flatten -> dense -> LeakyReLU.

Inputs are [N, C, H, W] floats (images in [0, 1]). Every encoder is one `nn.Sequential` of a small
set of ops, so `export` can describe it as a flat program of named arrays that the torch-free SDK
replays in numpy (ludus_client.numpy_encoders.visual_encoder_forward) with the same result.
"""
from __future__ import annotations

import abc
from typing import Dict, List, Sequence, Tuple, Type

import numpy as np
import torch
from torch import nn

from ludus_service.errors import InvalidArgument

#: Smallest height and width each encoder accepts (below it a conv/pool output would be empty).
MIN_RESOLUTION: Dict[str, int] = {
    "simple": 20,
    "nature_cnn": 36,
    "resnet": 15,
    "match3": 5,
    "fully_connected": 1,
}

#: Version of the description `export` returns; the numpy evaluator refuses any other.
DESCRIPTION_FORMAT = "ludus.visual_encoder.v1"
#: ML-Agents initialises the final dense layer with Kaiming-He normal weights times this (ReLU gain).
_DENSE_GAIN = 1.41


def check_visual_shape(vis_encode_type: str, shape: Sequence[int], name: str, field: str = "") -> None:
    """Reject, at registration, a visual observation the configured encoder cannot process.

    Raised here rather than deep inside torch so the client learns which observation, which encoder
    and which minimum side are involved. `field` defaults to f"spec.observations[{name}]".
    """
    field = field or f"spec.observations[{name}]"
    if vis_encode_type not in MIN_RESOLUTION:
        known = ", ".join(sorted(MIN_RESOLUTION))
        raise InvalidArgument(field, f"unknown vis_encode_type {vis_encode_type!r} (one of {known})")
    dims = [int(d) for d in shape]
    if len(dims) != 3 or dims[0] < 1:
        raise InvalidArgument(
            field, f"visual observation {name!r} has shape {tuple(dims)}; expected (channels, height, width), channels >= 1"
        )
    _, height, width = dims
    minimum = MIN_RESOLUTION[vis_encode_type]
    if height < minimum or width < minimum:
        raise InvalidArgument(
            field,
            f"visual observation {name!r} has shape {tuple(dims)} (C, H, W); the {vis_encode_type!r} encoder needs "
            f"height and width of at least {minimum}",
        )


def conv_output_hw(hw: Tuple[int, int], kernel: int, stride: int = 1, padding: int = 0) -> Tuple[int, int]:
    """Spatial size after a conv or max-pool (torch's floor formula, no dilation, no ceil_mode)."""
    return tuple((d + 2 * padding - kernel) // stride + 1 for d in hw)  # type: ignore[return-value]


def _dense(in_size: int, out_size: int) -> nn.Linear:
    """Kaiming-He normal x 1.41, zero bias: ML-Agents' init for the encoders' final dense layer."""
    layer = nn.Linear(in_size, out_size)
    nn.init.kaiming_normal_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(_DENSE_GAIN)
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """x + conv(swish(conv(swish(x)))), 3x3 convs with padding 1 (ML-Agents' ResNetBlock)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, 1, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, 1, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def _copy(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous copy: parameters are updated in place after export."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


def _describe(module: nn.Module, path: str, tensors: Dict[str, np.ndarray]) -> dict:
    """One op of the exported program; weights go to `tensors` under `path`."""
    if isinstance(module, nn.Conv2d):
        tensors[f"{path}.weight"] = _copy(module.weight)
        tensors[f"{path}.bias"] = _copy(module.bias)
        return {
            "op": "conv2d",
            "weight": f"{path}.weight",
            "bias": f"{path}.bias",
            "kernel": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(module.padding),
        }
    if isinstance(module, nn.Linear):
        tensors[f"{path}.weight"] = _copy(module.weight)
        tensors[f"{path}.bias"] = _copy(module.bias)
        return {"op": "linear", "weight": f"{path}.weight", "bias": f"{path}.bias"}
    if isinstance(module, nn.MaxPool2d):
        return {"op": "max_pool2d", "kernel": module.kernel_size, "stride": module.stride, "padding": module.padding}
    if isinstance(module, nn.LeakyReLU):
        return {"op": "leaky_relu", "negative_slope": module.negative_slope}
    if isinstance(module, nn.SiLU):
        return {"op": "swish"}
    if isinstance(module, nn.ReLU):
        return {"op": "relu"}
    if isinstance(module, nn.Flatten):
        return {"op": "flatten"}
    if isinstance(module, ResidualBlock):
        return {"op": "residual", "layers": _describe_sequence(module.layers, f"{path}.layers", tensors)}
    raise TypeError(f"cannot export {type(module).__name__}")


def _describe_sequence(seq: nn.Sequential, path: str, tensors: Dict[str, np.ndarray]) -> List[dict]:
    return [_describe(m, f"{path}.{i}", tensors) for i, m in enumerate(seq)]


class VisualEncoder(nn.Module, abc.ABC):
    """Shared shape bookkeeping, forward and export; subclasses only build `self.layers`."""

    vis_encode_type = ""

    def __init__(self, height: int, width: int, channels: int, output_size: int) -> None:
        super().__init__()
        minimum = MIN_RESOLUTION[self.vis_encode_type]
        if min(height, width) < minimum or channels < 1 or output_size < 1:
            raise ValueError(
                f"{self.vis_encode_type} encoder needs H, W >= {minimum}, C >= 1, output_size >= 1; "
                f"got C={channels} H={height} W={width} output_size={output_size}"
            )
        self.shape = (channels, height, width)
        self.output_size = output_size
        body, flatten_size = self._body(height, width, channels)
        self.flatten_size = flatten_size
        self.layers = nn.Sequential(*body, nn.Flatten(), _dense(flatten_size, output_size), self._final_activation())

    @abc.abstractmethod
    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        """The layers before the flatten, and the flattened size they produce."""

    def _final_activation(self) -> nn.Module:
        return nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def export(self, prefix: str) -> Tuple[Dict[str, np.ndarray], dict]:
        """Copies of the weights named f"{prefix}.layers...." and the program that evaluates them."""
        tensors: Dict[str, np.ndarray] = {}
        program = _describe_sequence(self.layers, f"{prefix}.layers", tensors)
        description = {
            "format": DESCRIPTION_FORMAT,
            "type": self.vis_encode_type,
            "shape": list(self.shape),
            "output_size": self.output_size,
            "flatten_size": self.flatten_size,
            "layers": program,
        }
        return tensors, description


def _conv_stack(
    height: int, width: int, channels: int, specs: Sequence[Tuple[int, int, int]]
) -> Tuple[List[nn.Module], int]:
    """Unpadded conv + LeakyReLU per (out_channels, kernel, stride); returns layers and flat size."""
    layers: List[nn.Module] = []
    hw = (height, width)
    for out_channels, kernel, stride in specs:
        layers += [nn.Conv2d(channels, out_channels, kernel, stride), nn.LeakyReLU()]
        hw = conv_output_hw(hw, kernel, stride)
        channels = out_channels
    return layers, channels * hw[0] * hw[1]


class SimpleVisualEncoder(VisualEncoder):
    vis_encode_type = "simple"

    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        return _conv_stack(height, width, channels, [(16, 8, 4), (32, 4, 2)])


class NatureVisualEncoder(VisualEncoder):
    vis_encode_type = "nature_cnn"

    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        return _conv_stack(height, width, channels, [(32, 8, 4), (64, 4, 2), (64, 3, 1)])


class Match3VisualEncoder(VisualEncoder):
    """For small board-like grids: 3x3 stride-1 convs keep every cell."""

    vis_encode_type = "match3"

    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        return _conv_stack(height, width, channels, [(35, 3, 1), (144, 3, 1)])


class FullyConnectedVisualEncoder(VisualEncoder):
    """No convolution: the pixels, flattened in (C, H, W) order, feed the dense layer directly."""

    vis_encode_type = "fully_connected"

    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        return [], channels * height * width


class ResNetVisualEncoder(VisualEncoder):
    """IMPALA-style: each stack halves the resolution, residual blocks keep gradients flowing."""

    vis_encode_type = "resnet"
    STACK_CHANNELS = (16, 32, 32)
    BLOCKS_PER_STACK = 2

    def _body(self, height: int, width: int, channels: int) -> Tuple[List[nn.Module], int]:
        layers: List[nn.Module] = []
        hw = (height, width)
        for out_channels in self.STACK_CHANNELS:
            layers += [nn.Conv2d(channels, out_channels, 3, 1, padding=1), nn.MaxPool2d(3, 2)]
            layers += [ResidualBlock(out_channels) for _ in range(self.BLOCKS_PER_STACK)]
            hw = conv_output_hw(hw, 3, 2)
            channels = out_channels
        layers.append(nn.SiLU())
        return layers, channels * hw[0] * hw[1]

    def _final_activation(self) -> nn.Module:
        return nn.ReLU()  # ML-Agents ends the ResNet encoder with torch.relu, not LeakyReLU


ENCODERS: Dict[str, Type[VisualEncoder]] = {
    cls.vis_encode_type: cls
    for cls in (
        SimpleVisualEncoder,
        NatureVisualEncoder,
        ResNetVisualEncoder,
        Match3VisualEncoder,
        FullyConnectedVisualEncoder,
    )
}
assert set(ENCODERS) == set(MIN_RESOLUTION)


def make_visual_encoder(vis_encode_type: str, shape: Sequence[int], output_size: int) -> VisualEncoder:
    """The encoder for one (C, H, W) observation; ValueError for an unknown type or too-small shape."""
    if vis_encode_type not in ENCODERS:
        raise ValueError(f"unknown vis_encode_type {vis_encode_type!r}")
    if len(shape) != 3:
        raise ValueError(f"visual observation shape must be (C, H, W), got {tuple(shape)}")
    channels, height, width = (int(d) for d in shape)
    return ENCODERS[vis_encode_type](height, width, channels, output_size)

