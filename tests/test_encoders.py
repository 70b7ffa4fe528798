"""Visual encoders: the torch modules (service) and their numpy replay (client SDK) agree.

Weights are randomised (biases included) before export, so a wrong stride, padding, activation,
flatten order or residual wiring on either side changes the output and fails the comparison.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ludus_client import numpy_encoders as npe
from ludus_service.encoders import MIN_RESOLUTION, check_visual_shape, make_visual_encoder
from ludus_service.errors import InvalidArgument

OUTPUT_SIZE = 16
REPO = Path(__file__).resolve().parents[1]


def _shapes(kind: str) -> List[Tuple[int, int, int]]:
    """Minimum side (C = 1 and 3), minimum in one dimension only, 84x84, and a non-square image."""
    m = MIN_RESOLUTION[kind]
    non_square = (3, 40, 30) if min(40, 30) >= m else (3, m + 9, m)
    return [(1, m, m), (3, m, m), (1, m, m + 7), (3, 84, 84), non_square]


CASES = [(kind, shape) for kind in MIN_RESOLUTION for shape in _shapes(kind)]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights at a scale that keeps activations O(1); nonzero biases so they are checked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = (p[0].numel() ** -0.5) if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)


@pytest.mark.parametrize("kind,shape", CASES, ids=[f"{k}-{'x'.join(map(str, s))}" for k, s in CASES])
def test_torch_and_numpy_agree(kind: str, shape: Tuple[int, int, int]) -> None:
    encoder = make_visual_encoder(kind, shape, OUTPUT_SIZE)
    _randomise(encoder, seed=CASES.index((kind, shape)))
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(x)).numpy()
    tensors, description = encoder.export("obs0")
    description = json.loads(json.dumps(description))  # must survive JSON, as it does on the wire

    actual = npe.visual_encoder_forward(description, tensors, x)

    assert expected.shape == (3, OUTPUT_SIZE) and encoder.output_size == OUTPUT_SIZE
    assert actual.shape == (3, OUTPUT_SIZE) and actual.dtype == np.float32
    assert np.abs(expected).max() > 1e-3 and np.ptp(expected, axis=0).max() > 1e-4  # not degenerate
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert description["type"] == kind and description["shape"] == list(shape)
    assert description["output_size"] == OUTPUT_SIZE
    assert all(name.startswith("obs0.") for name in tensors)
    assert all(a.dtype == np.float32 and a.flags["C_CONTIGUOUS"] for a in tensors.values())


def test_numpy_detects_a_changed_weight() -> None:
    """Guards the comparison itself: a perturbed exported weight must change the numpy output."""
    encoder = make_visual_encoder("resnet", (3, 20, 20), OUTPUT_SIZE)
    _randomise(encoder, seed=1)
    tensors, description = encoder.export("e")
    x = np.random.default_rng(1).random((2, 3, 20, 20), dtype=np.float32)
    before = npe.visual_encoder_forward(description, tensors, x)
    name = next(n for n in tensors if "layers.2.layers.3" in n and n.endswith("weight"))  # a residual conv
    tensors[name] = tensors[name] * 1.5
    assert not np.allclose(before, npe.visual_encoder_forward(description, tensors, x), atol=1e-4)


@pytest.mark.parametrize("kind", list(MIN_RESOLUTION))
def test_export_returns_copies(kind: str) -> None:
    encoder = make_visual_encoder(kind, (3, MIN_RESOLUTION[kind], MIN_RESOLUTION[kind]), OUTPUT_SIZE)
    tensors, _ = encoder.export("enc")
    snapshot: Dict[str, np.ndarray] = {k: v.copy() for k, v in tensors.items()}
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
    for key, value in tensors.items():
        np.testing.assert_array_equal(value, snapshot[key], err_msg=key)
    assert len(tensors) == len(list(encoder.parameters()))  # every parameter exported once


@pytest.mark.parametrize("kind", list(MIN_RESOLUTION))
def test_check_visual_shape(kind: str) -> None:
    m = MIN_RESOLUTION[kind]
    field = "spec.observations[camera]"
    check_visual_shape(kind, (3, m, m), "camera", field)
    check_visual_shape(kind, (1, m, m + 5), "camera", field)
    for bad in [(3, m - 1, m), (3, m, m - 1)]:
        with pytest.raises(InvalidArgument) as info:
            check_visual_shape(kind, bad, "camera", field)
        message = str(info.value)
        assert info.value.field == field
        assert "camera" in message and kind in message and str(m) in message and str(bad) in message
    with pytest.raises(ValueError):
        make_visual_encoder(kind, (3, m - 1, m), OUTPUT_SIZE)


def test_check_visual_shape_rejects_unknown_encoder_and_bad_rank() -> None:
    with pytest.raises(InvalidArgument, match="vis_encode_type"):
        check_visual_shape("alexnet", (3, 84, 84), "camera")
    with pytest.raises(InvalidArgument, match="camera") as info:
        check_visual_shape("simple", (84, 84), "camera")
    assert info.value.field == "spec.observations[camera]"


def test_primitives_match_torch_with_padding_and_uneven_strides() -> None:
    """Paths the encoders do not exercise (pool padding, per-axis stride) still follow torch."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 11, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    tx = torch.from_numpy(x)
    expected = F.conv2d(tx, torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1), padding=(1, 2)).numpy()
    np.testing.assert_allclose(npe.conv2d(x, w, b, (2, 1), (1, 2)), expected, atol=1e-5, rtol=1e-5)
    expected = F.max_pool2d(tx - 10.0, 3, 2, padding=1).numpy()  # all negative: padding must not win
    np.testing.assert_array_equal(npe.max_pool2d(x - 10.0, 3, 2, 1), expected)
    np.testing.assert_allclose(npe.swish(x), F.silu(tx).numpy(), atol=1e-6, rtol=1e-5)
    np.testing.assert_array_equal(npe.leaky_relu(x), F.leaky_relu(tx).numpy())


def test_numpy_rejects_wrong_input_shape_and_unknown_op() -> None:
    encoder = make_visual_encoder("match3", (2, 6, 7), OUTPUT_SIZE)
    tensors, description = encoder.export("m")
    with pytest.raises(ValueError, match="expected input"):
        npe.visual_encoder_forward(description, tensors, np.zeros((1, 2, 7, 6), np.float32))
    description["layers"].insert(0, {"op": "dropout"})
    with pytest.raises(ValueError, match="dropout"):
        npe.visual_encoder_forward(description, tensors, np.zeros((1, 2, 6, 7), np.float32))


def test_numpy_encoders_import_without_torch() -> None:
    code = "import sys, ludus_client.numpy_encoders; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "client"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
