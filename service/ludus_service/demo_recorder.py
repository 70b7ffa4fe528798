"""Recording trajectories as an ML-Agents `.demo` file (RecordDemonstration).

Trajectories arrive in Ludus' step model (observation, action, the reward that followed); a `.demo`
holds Unity's record model (each record: the observation at a decision, its action, and the reward
received since the previous decision), which ludus_service.demonstrations reads back.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ludus_client.demo_file import DemoObservation, DemoStep, write_demo_file
from ludus_client.spec import BehaviorSpec

#: A demonstration's file name without extension: never a path, never hidden.
DEMO_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")

def _lossless_uint8(arr: np.ndarray) -> Optional[np.ndarray]:
    """arr as uint8 pixels if PNG would store it exactly (uint8, or floats that are all k/255)."""
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        return None
    pixels = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    return pixels if np.array_equal(np.divide(pixels, np.float32(255), dtype=np.float32), arr.astype(np.float32)) else None


class DemonstrationRecorder:
    """Collects trajectories of one behaviour and writes them as an ML-Agents `.demo` file.

    `add` takes the arrays a validated trajectory carries (observations as [T, *shape] arrays,
    continuous/discrete actions, rewards, done, interrupted, action masks with True = allowed,
    agent_id, and the observations after the last step). Pieces of one agent's episode may arrive in
    several calls; they are joined. Records are written per agent, contiguously, in Unity's record
    model (see the module docstring); an episode still open at `finish` is closed as interrupted
    (done + max_step_reached), so every reader splits it there.

    Storage decision: observations are stored as float data (always loadable, exact), except that with
    `compress_visual=True` rank-3 observations whose values PNG stores exactly (uint8 frames, or floats
    that are all k/255) are stored PNG-compressed like Unity's cameras (needs Pillow).
    """

    def __init__(self, spec: BehaviorSpec, directory: Union[str, os.PathLike], brain_name: str = "",
                 compress_visual: bool = False) -> None:
        self.spec = spec
        self.directory = Path(directory)
        self.brain_name = brain_name
        self.compress_visual = compress_visual
        self._records: Dict[str, List[DemoStep]] = {}
        self._open: Dict[str, Tuple[DemoStep, float]] = {}  # agent -> (pending last record, its reward)
        self._ids: Dict[str, int] = {}

    @property
    def num_records(self) -> int:
        return sum(len(r) for r in self._records.values()) + len(self._open)

    def _observations(self, arrays: Sequence[np.ndarray], t: int) -> List[DemoObservation]:
        out = []
        for spec, arr in zip(self.spec.observations, arrays):
            x = np.asarray(arr[t])
            common = dict(shape=tuple(spec.shape), observation_type=int(spec.observation_type), name=spec.name)
            pixels = _lossless_uint8(x) if self.compress_visual and len(spec.shape) == 3 else None
            if pixels is not None:
                from ludus_client.images import png_tensor  # Pillow only when used

                tensor = png_tensor(pixels[None])
                out.append(DemoObservation(png=bytes(tensor.compressed_data[0]),
                                           channel_mapping=tuple(tensor.compressed_channel_mapping), **common))
            else:
                out.append(DemoObservation(data=x.astype(np.float32), **common))
        return out

    def add(self, *, observations: Sequence[np.ndarray], rewards: np.ndarray, agent_id: str,
            continuous_actions: Optional[np.ndarray] = None, discrete_actions: Optional[np.ndarray] = None,
            done: bool = False, interrupted: bool = False, action_masks: Optional[np.ndarray] = None,
            next_observations: Optional[Sequence[np.ndarray]] = None) -> None:
        """Append T steps of one agent. next_observations (each [*shape]) are the observations after
        the last step; when done without them, the last step's observations stand in for the terminal ones."""
        a = self.spec.actions
        rewards = np.asarray(rewards, np.float32).reshape(-1)
        n = rewards.shape[0]
        if n == 0:
            raise ValueError("rewards: a trajectory needs at least one step")
        if len(observations) != len(self.spec.observations):
            raise ValueError(f"observations: {len(observations)} arrays but the spec has {len(self.spec.observations)}")
        for j, (o, s) in enumerate(zip(observations, self.spec.observations)):
            if tuple(np.shape(o)) != (n, *s.shape):
                raise ValueError(f"observations[{j}]: shape {list(np.shape(o))}, expected {[n, *s.shape]}")
        cont = np.zeros((n, 0), np.float32) if continuous_actions is None else np.asarray(continuous_actions, np.float32)
        disc = np.zeros((n, 0), np.int64) if discrete_actions is None else np.asarray(discrete_actions, np.int64)
        if cont.shape != (n, a.continuous_size) or disc.shape != (n, a.num_branches):
            raise ValueError(f"actions: continuous {list(cont.shape)} and discrete {list(disc.shape)}, expected "
                             f"{[n, a.continuous_size]} and {[n, a.num_branches]}")
        if action_masks is not None and np.shape(action_masks) != (n, a.mask_size):
            raise ValueError(f"action_masks: shape {list(np.shape(action_masks))}, expected {[n, a.mask_size]}")
        if not (done or interrupted) and next_observations is None:
            raise ValueError("next_observations are required unless the trajectory is done or interrupted")
        forbidden = None if action_masks is None else ~np.asarray(action_masks, bool)
        uid = self._ids.setdefault(agent_id, len(self._ids))
        records = self._records.setdefault(agent_id, [])
        reward_in = 0.0
        if agent_id in self._open:  # the piece continues an episode: drop the stand-in last record
            reward_in = self._open.pop(agent_id)[1]
        for t in range(n):
            records.append(DemoStep(
                observations=self._observations(observations, t), reward=reward_in if t == 0 else float(rewards[t - 1]),
                agent_id=uid, continuous_actions=cont[t], discrete_actions=disc[t].astype(np.int32),
                action_mask=np.zeros(0, bool) if forbidden is None else forbidden[t]))
        final_obs = ([np.asarray(o)[None] for o in next_observations] if next_observations is not None
                     else [np.asarray(o)[-1:] for o in observations])
        last = DemoStep(observations=self._observations(final_obs, 0), reward=float(rewards[-1]),
                        done=bool(done or interrupted), max_step_reached=bool(interrupted), agent_id=uid,
                        continuous_actions=cont[-1], discrete_actions=disc[-1].astype(np.int32))
        if done or interrupted:
            records.append(last)
        else:
            self._open[agent_id] = (last, float(rewards[-1]))

    def finish(self, name: str, overwrite: bool = False) -> Path:
        """Write everything recorded to `<directory>/<name>.demo` (replacing it atomically with
        `overwrite`, otherwise `<name>_<k>.demo` if taken) and return the path. `name` may hold
        letters, digits, '_', '-', '.' (no path separators, not starting with '.')."""
        if not DEMO_NAME.fullmatch(name or ""):
            raise ValueError(f"name: must be 1-128 letters, digits, '_', '-' or '.', not starting with '.', got {name!r}")
        for agent_id, (last, _) in self._open.items():  # an episode cut by the end of the recording
            last.done = last.max_step_reached = True
            self._records[agent_id].append(last)
        self._open.clear()
        steps = [s for records in self._records.values() for s in records]
        if not steps:
            raise ValueError("nothing was recorded")
        self.directory.mkdir(parents=True, exist_ok=True)
        path, k = self.directory / f"{name}.demo", 0
        while path.exists() and not overwrite:
            path, k = self.directory / f"{name}_{k}.demo", k + 1
        write_demo_file(path, steps, continuous_size=self.spec.actions.continuous_size,
                        discrete_branches=self.spec.actions.discrete_branches, name=name, brain_name=self.brain_name)
        self._records.clear()
        self._ids.clear()
        return path
