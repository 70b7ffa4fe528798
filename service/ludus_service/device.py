"""`--device auto|cpu|cuda[:N]` resolution."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """auto picks CUDA when torch sees a GPU; an explicit CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: torch sees no CUDA device (is a CUDA build of torch installed?)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: expected auto, cpu or cuda[:N]")
    return device
