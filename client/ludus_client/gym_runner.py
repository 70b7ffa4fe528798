"""`ludus-gym`: run vectorised Gymnasium envs as agents of one Ludus behaviour.

Each env index is one agent. The runner acts with the local copy of the policy, cuts trajectories
at `time_horizon` (termination -> done, truncation -> interrupted, with the final observation for
bootstrapping), streams them to the service, and swaps in each new policy version as WatchPolicy
delivers it. Progress (env steps, steps/s, mean return, policy version) is shown with tqdm.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import grpc
import gymnasium as gym
import numpy as np
import yaml
from gymnasium.vector import AutoresetMode

from ludus.v1 import trainer_pb2 as pb
from ludus_client.auth import read_token_file
from ludus_client.client import LudusClient, LudusError
from ludus_client.policy import LocalPolicy
from ludus_client.spec import ActionSpec, BehaviorSpec, ObservationSpec
from ludus_client.stream import TrajectoryStream
from ludus_client.trajectory import TrajectoryBuilder


def spec_from_spaces(observation_space: gym.Space, action_space: gym.Space) -> BehaviorSpec:
    """Gymnasium spaces -> BehaviorSpec (flat Box observations; Discrete, MultiDiscrete or Box actions)."""
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(f"observation space {observation_space} is not supported yet (flat Box only)")
    obs = ObservationSpec("obs", (int(np.prod(observation_space.shape)),))
    if isinstance(action_space, gym.spaces.Discrete):
        actions = ActionSpec(0, (int(action_space.n),))
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        actions = ActionSpec(0, tuple(int(n) for n in action_space.nvec.reshape(-1)))
    elif isinstance(action_space, gym.spaces.Box):
        actions = ActionSpec(int(np.prod(action_space.shape)), ())
    else:
        raise ValueError(f"action space {action_space} is not supported")
    return BehaviorSpec((obs,), actions)


class ActionAdapter:
    """PolicyOutput -> what the env's action space expects."""

    def __init__(self, space: gym.Space) -> None:
        self.space = space

    def __call__(self, output) -> np.ndarray:
        s = self.space
        if isinstance(s, gym.spaces.Discrete):
            return output.discrete_actions[:, 0] + int(s.start)
        if isinstance(s, gym.spaces.MultiDiscrete):
            return output.discrete_actions.reshape((-1, *s.nvec.shape)) + s.start
        low, high = s.low.reshape(-1), s.high.reshape(-1)
        scaled = low + (output.env_continuous_actions + 1.0) * 0.5 * (high - low)  # [-1, 1] -> [low, high]
        return scaled.reshape((-1, *s.shape)).astype(s.dtype)


class PolicyHolder:
    """The policy the runner acts with, replaced atomically by the watcher thread."""

    def __init__(self, policy: LocalPolicy) -> None:
        self.policy = policy
        self._changed = threading.Condition()

    def offer(self, policy: LocalPolicy) -> None:
        with self._changed:
            if policy.version > self.policy.version:
                self.policy = policy
                self._changed.notify_all()

    def replace(self, policy: LocalPolicy) -> None:
        """Unconditional swap: the server restarted from an older checkpoint (versions went back)."""
        with self._changed:
            self.policy = policy
            self._changed.notify_all()

    def wait_changed(self, version: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.policy.version != version, timeout)


@dataclass
class RunResult:
    env_steps: int
    episodes: int
    mean_return: float  # over the last `window` episodes
    solved: bool
    seconds: float
    policy_version: int
    returns: List[float] = field(default_factory=list)
    curve: List[tuple] = field(default_factory=list)  # (env_steps, mean_return) at each episode end


def _watch(client: LudusClient, name: str, holder: PolicyHolder, stop: threading.Event) -> None:
    backoff = 0.2
    while not stop.is_set():
        watch = client.watch_policy(name, after_version=holder.policy.version)
        stopper = threading.Thread(target=lambda: (stop.wait(), watch.cancel()), daemon=True)
        stopper.start()
        try:
            for blob in watch:
                holder.offer(blob.load())
                backoff = 0.2
        except LudusError:
            if stop.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)


class AgentRecorder:
    """Per-env trajectory pieces and episode returns: what every Gymnasium loop (the runner, and the
    in-process benchmark loop) does with one vectorised step."""

    def __init__(self, spec: BehaviorSpec, name: str, num_envs: int, time_horizon: int, submit: Callable[[Any], None], window: int) -> None:
        self.builders = [TrajectoryBuilder(spec, f"{name}-{i}") for i in range(num_envs)]
        self.time_horizon = time_horizon
        self.submit = submit
        self.episode_returns = np.zeros(num_envs)
        self.recent: deque = deque(maxlen=window)
        self.returns: List[float] = []
        self.curve: List[tuple] = []  # (env_steps, mean return over the window) at each episode end

    def record(self, flat_obs: np.ndarray, out, rewards, terminated, truncated, info, next_obs, env_steps: int, version: int) -> None:
        """Add one step of every env; send pieces that ended an episode or reached time_horizon."""
        self.episode_returns += rewards
        for i, builder in enumerate(self.builders):
            builder.add_step([flat_obs[i]], out.continuous_actions[i], out.discrete_actions[i],
                             out.continuous_log_probs[i], out.discrete_log_probs[i], rewards[i], version)
            if terminated[i] or truncated[i]:
                final = np.asarray(info["final_obs"][i], dtype=np.float32).reshape(-1)
                self.submit(builder.build([final], done=bool(terminated[i]), interrupted=bool(truncated[i])))
                self.recent.append(float(self.episode_returns[i]))
                self.returns.append(float(self.episode_returns[i]))
                self.curve.append((env_steps + i + 1, float(np.mean(self.recent))))
                self.episode_returns[i] = 0.0
            elif len(builder) >= self.time_horizon:
                self.submit(builder.build([next_obs[i].reshape(-1).astype(np.float32)]))

    def step(self, envs, adapter: "ActionAdapter", policy: LocalPolicy, obs: np.ndarray, rng: np.random.Generator, env_steps: int) -> np.ndarray:
        """Act with `policy` in every env, step them, record the step; returns the next observations."""
        flat_obs = obs.reshape(len(self.builders), -1).astype(np.float32)
        out = policy.act([flat_obs], rng=rng)
        next_obs, rewards, terminated, truncated, info = envs.step(adapter(out))
        self.record(flat_obs, out, rewards, terminated, truncated, info, next_obs, env_steps, policy.version)
        return next_obs

    def flush(self, obs: np.ndarray) -> None:
        """Send every open piece, bootstrapped from the current observations (end of a rollout or run)."""
        for i, builder in enumerate(self.builders):
            if len(builder):
                self.submit(builder.build([obs[i].reshape(-1).astype(np.float32)]))

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")


def _await_next_version(client: LudusClient, name: str, holder: PolicyHolder, stream: TrajectoryStream, acted_version: int,
                        rollout_steps: int, timeout: float, rolled_back: threading.Event) -> bool:
    """Wait for the update our rollout completes. False if the server cannot update without more
    data: everything we sent is acknowledged and its buffer plus queue is still short of buffer_size
    (after a restart from a checkpoint, steps acknowledged by the old process are gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder.wait_changed(acted_version, 1.0) or rolled_back.is_set():
            return True
        state = client.describe(name)
        if state.policy_version != acted_version:
            # A version exists that the watch did not deliver: after a resume, version numbers issued
            # by the crashed process can be issued again, and a watch asking for newer ones waits.
            holder.replace(client.get_local_policy(name))
            return True
        if stream.unacknowledged == 0 and state.buffered_steps + state.queued_steps < rollout_steps:
            return False
    raise LudusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no policy newer than version {acted_version} within {timeout:.0f}s")


def run(
    env_id: str,
    server: str,
    steps: int,
    num_envs: int = 8,
    behavior_name: Optional[str] = None,
    settings: Optional[Dict[str, Any]] = None,
    seed: Optional[int] = 0,
    target_return: Optional[float] = None,
    window: int = 20,
    progress: bool = True,
    env_kwargs: Optional[Dict[str, Any]] = None,
    sync: bool = True,
    version_timeout: float = 120.0,
    token: Optional[str] = None,
    root_certificates: Optional[bytes] = None,
) -> RunResult:
    """Train `env_id` through the server for `steps` env steps (or until `target_return`).

    sync=True (on-policy, like SB3's rollouts): after `buffer_size` steps acted by one policy
    version, cut every open trajectory (bootstrapped) and wait for the next version. sync=False lets
    the envs run freely, as a real-time game would; data that lags too far is dropped by the server.
    """
    name = behavior_name or re.sub(r"[^A-Za-z0-9_.\-]", "_", env_id)
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **(env_kwargs or {}))
    spec = spec_from_spaces(envs.single_observation_space, envs.single_action_space)
    adapter = ActionAdapter(envs.single_action_space)
    rng = np.random.default_rng(seed)
    client = LudusClient(server, token=token, root_certificates=root_certificates)  # token None: env LUDUS_AUTH_TOKEN
    client.wait_ready()
    registration = client.register(name, spec, settings)
    time_horizon = int(registration.settings["time_horizon"])
    rollout_steps = int(registration.settings["hyperparameters"]["buffer_size"])
    holder = PolicyHolder(client.get_local_policy(name))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(client, name, holder, stop), daemon=True, name="policy-watch")
    watcher.start()
    rolled_back = threading.Event()

    def on_ack(ack) -> None:
        if ack.drop_reason == pb.DROP_REASON_UNKNOWN_POLICY_VERSION:
            rolled_back.set()

    stream = TrajectoryStream(client, name, on_ack=on_ack)
    recorder = AgentRecorder(spec, name, num_envs, time_horizon, stream.submit, window)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, unit="step", desc=f"{env_id} via {server}", mininterval=1.0, smoothing=0.1, file=sys.stdout)
    obs, _ = envs.reset(seed=seed)
    env_steps, solved, started = 0, False, time.perf_counter()
    acted_version, acted_steps = holder.policy.version, 0
    try:
        while env_steps < steps:
            if rolled_back.is_set():  # the server resumed from an older checkpoint: act with its policy
                rolled_back.clear()
                holder.replace(client.get_local_policy(name))
            policy = holder.policy
            if policy.version != acted_version:
                acted_version, acted_steps = policy.version, 0
            if sync and acted_steps >= rollout_steps:
                recorder.flush(obs)  # end the rollout: bootstrap every open piece
                if not _await_next_version(client, name, holder, stream, acted_version, rollout_steps, version_timeout, rolled_back):
                    acted_steps = 0  # the learner needs more data (e.g. steps lost in a server crash): collect again
                continue
            obs = recorder.step(envs, adapter, policy, obs, rng, env_steps)
            env_steps += num_envs
            acted_steps += num_envs
            if bar is not None:
                bar.update(num_envs)
                bar.set_postfix(mean_return=f"{recorder.mean_return:.1f}", version=holder.policy.version,
                                episodes=len(recorder.returns), refresh=False)
            if target_return is not None and len(recorder.recent) == window and recorder.mean_return >= target_return:
                solved = True
                break
        recorder.flush(obs)  # send the unfinished pieces too: no acted step is wasted
        stream.close()
    finally:
        stop.set()
        if bar is not None:
            bar.close()
        envs.close()
    watcher.join(timeout=5)
    client.close()
    return RunResult(env_steps, len(recorder.returns), recorder.mean_return, solved,
                     time.perf_counter() - started, holder.policy.version, recorder.returns, recorder.curve)


def load_behavior_settings(path: str, behavior_name: str) -> Dict[str, Any]:
    """Settings for one behaviour from an ML-Agents YAML (behaviors.<name>, else default_settings)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    behaviors = data.get("behaviors") or {}
    return behaviors.get(behavior_name) or data.get("default_settings") or {}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="ludus-gym", description="Train a Gymnasium env through a Ludus server.")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--server", default="localhost:50051", help="Ludus server HOST:PORT")
    p.add_argument("--steps", type=int, default=100_000, help="env steps to run (all envs together)")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--behavior-name", default=None, help="default: the env id")
    p.add_argument("--trainer-config", default=None, help="ML-Agents YAML; behaviors.<name> is sent with RegisterBehavior")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-return", type=float, default=None, help="stop once the mean return over --window episodes reaches this")
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-sync", action="store_true", help="free-running envs (do not wait for a new policy after each buffer_size rollout)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--token-file", default=None, help="bearer token for a server started with --auth-token-file (default: env LUDUS_AUTH_TOKEN)")
    p.add_argument("--tls-ca", default=None, help="connect with TLS, trusting this PEM CA bundle")
    args = p.parse_args(argv)
    name = args.behavior_name or re.sub(r"[^A-Za-z0-9_.\-]", "_", args.env)
    settings = load_behavior_settings(args.trainer_config, name) if args.trainer_config else None
    try:
        token = read_token_file(args.token_file) if args.token_file else None
        root_certificates = pathlib.Path(args.tls_ca).read_bytes() if args.tls_ca else None
    except (OSError, ValueError) as err:
        print(f"ludus-gym: {err}", file=sys.stderr)
        return 2
    try:
        result = run(args.env, args.server, args.steps, args.num_envs, name, settings, args.seed,
                     args.target_return, args.window, progress=not args.no_progress, sync=not args.no_sync,
                     token=token, root_certificates=root_certificates)
    except LudusError as err:
        print(f"ludus-gym: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in vars(result).items() if k not in ("returns", "curve")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{'solved' if result.solved else 'finished'}: {result.env_steps} env steps, {result.episodes} episodes, "
              f"mean return {result.mean_return:.1f} over the last {args.window}, policy version {result.policy_version}, "
              f"{result.seconds:.1f}s ({result.env_steps / max(result.seconds, 1e-9):.0f} steps/s)")
    if args.target_return is not None and not result.solved:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
