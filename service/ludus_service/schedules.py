"""Hyperparameter schedules (ML-Agents' ModelUtils.DecayedValue / polynomial decay of power 1)."""
from __future__ import annotations

#: Floors ML-Agents applies to the linear schedules.
LEARNING_RATE_FLOOR = 1e-10
EPSILON_FLOOR = 0.1
BETA_FLOOR = 1e-5


def decayed_value(schedule: str, initial: float, minimum: float, step: int, max_steps: int) -> float:
    """linear: (v0 - vmin) * (1 - min(step, max_steps) / max_steps) + vmin; constant: v0."""
    if schedule == "constant":
        return initial
    if schedule == "linear":
        fraction = min(step, max_steps) / max_steps
        return (initial - minimum) * (1.0 - fraction) + minimum
    raise ValueError(f"unknown schedule {schedule!r}")
