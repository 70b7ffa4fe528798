#!/usr/bin/env node
'use strict';
/**
 * The whole Ludus loop from Node.js, with a simulator written in JavaScript.
 *
 * Corridor: an agent on cells 0..6 starts in the middle and moves left or right (one discrete branch
 * of 2 options); reaching cell 6 pays +1 and ends the episode, every step costs 0.01, and an episode
 * is cut (interrupted) after 20 steps. The observation is the one-hot cell (a 7-float vector).
 *
 * Loop (on-policy, like the Python SDK's ludus-gym default): register the behaviour, fetch the initial
 * policy with GetPolicy, then per rollout act buffer_size steps with the current policy (evaluated in
 * JS from the safetensors weights), stream the trajectories (one acknowledgement each), and wait for
 * WatchPolicy to push the version that the resulting update produced. At the end, fetch the newest
 * version again with GetPolicy, check its SHA-256 matches what WatchPolicy announced, and print one
 * JSON summary line. Exit 0 on success, 1 with a message on stderr on any failure.
 *
 * It survives the trainer restarting (e.g. killed, then `ludus-server --resume` on the same port):
 * trajectories go through a ReliableTrajectoryStream, which reopens the stream and sends the
 * unacknowledged ones again; the WatchPolicy watch is reopened and starts with the version the server
 * resumed with, which the simulator then acts with; GetPolicy is retried on UNAVAILABLE. Each reconnect
 * is noted on stderr and the summary counts them (`reconnects`).
 *
 * Usage: node examples/train_corridor.js --target host:port [--steps 1024] [--behavior NAME]
 *        [--seed N] [--timeout SECONDS] [--checkpoint-interval STEPS] [--proto path/to/trainer.proto]
 */
const { LudusClient, encodeTensor, retryTransient } = require('../src/ludus');

const CELLS = 7;
const MAX_EPISODE_STEPS = 20;
// Small buffer and batch so an update happens after a few hundred steps; a tiny network trains fast.
const SETTINGS = {
  trainer_type: 'ppo',
  hyperparameters: { buffer_size: 256, batch_size: 64, num_epoch: 3, learning_rate: 0.003, beta: 0.005 },
  network_settings: { hidden_units: 16, num_layers: 1, normalize: false, activation: 'tanh' },
  reward_signals: { extrinsic: { gamma: 0.9, strength: 1.0 } },
  time_horizon: 32,
};

function parseArgs(argv) {
  const args = { target: null, steps: 1024, behavior: 'NodeCorridor', seed: 1, timeout: 300, 'checkpoint-interval': 0, proto: undefined };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '');
    if (!(key in args) || i + 1 >= argv.length) throw new Error(`unknown or incomplete option ${argv[i]}`);
    const value = argv[++i];
    args[key] = ['steps', 'seed', 'timeout', 'checkpoint-interval'].includes(key) ? Number(value) : value;
  }
  if (!args.target) throw new Error('--target host:port is required');
  if (!(args.steps >= SETTINGS.hyperparameters.buffer_size)) {
    throw new Error(`--steps must be at least buffer_size (${SETTINGS.hyperparameters.buffer_size}) so an update happens`);
  }
  return args;
}

/** mulberry32: a tiny seeded PRNG, so runs are reproducible for a given --seed. */
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Corridor {
  reset() { this.cell = 3; this.t = 0; return this.observe(); }

  observe() { const o = new Array(CELLS).fill(0); o[this.cell] = 1; return o; }

  step(action) {
    this.cell = Math.max(0, Math.min(CELLS - 1, this.cell + (action === 1 ? 1 : -1)));
    this.t += 1;
    const done = this.cell === CELLS - 1;
    return { obs: this.observe(), reward: (done ? 1 : 0) - 0.01, done, interrupted: !done && this.t >= MAX_EPISODE_STEPS };
  }
}

/** Collects the steps of one agent and turns them into a wire Trajectory. */
class TrajectoryBuilder {
  constructor() { this.clear(); }

  clear() { this.obs = []; this.actions = []; this.logProbs = []; this.rewards = []; }

  get length() { return this.rewards.length; }

  add(obs, action, logProb, reward) {
    this.obs.push(...obs); this.actions.push(action); this.logProbs.push(logProb); this.rewards.push(reward);
  }

  build(policyVersion, nextObs, done, interrupted) {
    const T = this.length;
    const trajectory = {
      agent_id: 'corridor-0',
      policy_version: policyVersion,
      observations: [encodeTensor(this.obs, [T, CELLS], 'FLOAT32')],
      discrete_actions: encodeTensor(this.actions, [T, 1], 'INT32'),
      discrete_log_probs: encodeTensor(this.logProbs, [T, 1], 'FLOAT32'),
      rewards: encodeTensor(this.rewards, [T], 'FLOAT32'),
      done,
      interrupted,
      // Needed to bootstrap the value of an unfinished piece (time-horizon cut, step limit).
      next_observations: done ? [] : [encodeTensor(nextObs, [CELLS], 'FLOAT32')],
    };
    this.clear();
    return trajectory;
  }
}

/** Follows WatchPolicy in the background, reopening it after a transient failure (server restart).
 * `next()` resolves with the newest version pushed since the previous call, waiting (up to timeoutMs) for one
 * if there is none yet. After a reconnect the watch pushes the server's current version (the one it
 * resumed with, possibly the one already in use): the update a rollout was waiting for may have died
 * with the old server process, so the simulator goes on with whatever the server now has. */
function followPolicies(client, behavior, afterVersion, timeoutMs) {
  const seen = [];
  let taken = 0;
  let waiter = null;
  let failure = null;
  const wake = () => { if (waiter) waiter(); };
  const watch = client.watchPolicy(behavior, {
    afterVersion,
    reconnect: true,
    giveUpAfterMs: timeoutMs,
    onReconnect: (err, n) => console.error(`train_corridor: WatchPolicy broke (${err.message}); reconnect ${n}`),
  });
  const done = (async () => {
    for await (const blob of watch) { seen.push(blob); wake(); }
    failure = failure || new Error('the server ended WatchPolicy');
    wake();
  })().catch((err) => { failure = err; wake(); });
  const take = () => { taken = seen.length; return seen[seen.length - 1]; };
  return {
    seen,
    get reconnects() { return watch.reconnects; },
    next() {
      if (taken < seen.length) return Promise.resolve(take());
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiter = null;
          reject(new Error(`no new policy version from WatchPolicy within ${timeoutMs / 1000} s`));
        }, timeoutMs);
        waiter = () => {
          clearTimeout(timer);
          waiter = null;
          if (taken < seen.length) resolve(take()); else reject(failure);
        };
      });
    },
    async stop() { failure = failure || new Error('stopped'); watch.cancel(); await done; },
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const random = seededRandom(args.seed);
  const timeoutMs = args.timeout * 1000;
  const client = new LudusClient(args.target, { protoPath: args.proto, timeoutMs });
  await client.waitReady(timeoutMs);

  const spec = {
    observations: [{ name: 'cell', shape: [CELLS], kind: 'OBSERVATION_KIND_VECTOR' }],
    actions: { continuous_size: 0, discrete_branches: [2] },
  };
  const settings = args['checkpoint-interval'] > 0 ? { ...SETTINGS, checkpoint_interval: args['checkpoint-interval'] } : SETTINGS;
  const registration = await client.register(args.behavior, spec, settings);
  const bufferSize = registration.settings.hyperparameters.buffer_size;
  const horizon = registration.settings.time_horizon;
  let policyRetries = 0;
  const retry = { giveUpAfterMs: timeoutMs, onRetry: (err) => { policyRetries += 1; console.error(`train_corridor: GetPolicy failed (${err.message}); retrying`); } };
  const initial = await retryTransient(() => client.getPolicy(args.behavior, registration.policyVersion), retry);
  let policy = initial.load();
  const watcher = followPolicies(client, args.behavior, initial.version, timeoutMs);
  // One stream for the whole run; it reconnects and resends by itself when the server restarts.
  const stream = client.openReliableStream(args.behavior, {
    giveUpAfterMs: timeoutMs,
    onReconnect: (err, n) => console.error(`train_corridor: SubmitTrajectories broke (${err.message}); reconnect ${n}`),
  });

  const env = new Corridor();
  const builder = new TrajectoryBuilder();
  const returns = []; // per episode: [policy version, return]
  let obs = env.reset();
  let episodeReturn = 0;
  let submitted = 0;
  let accepted = 0;
  let dropped = 0;
  while (submitted < args.steps) {
    // One on-policy rollout of buffer_size steps (less at the very end), all acted by `policy`.
    const rolloutSteps = Math.min(bufferSize, args.steps - submitted);
    const acks = [];
    for (let step = 0; step < rolloutSteps; step++) {
      const out = policy.act([obs], { random });
      const result = env.step(out.discrete[0]);
      builder.add(obs, out.discrete[0], out.discreteLogProbs[0], result.reward);
      episodeReturn += result.reward;
      const lastOfRollout = step === rolloutSteps - 1;
      if (result.done || result.interrupted || builder.length === horizon || lastOfRollout) {
        acks.push(stream.submit(builder.build(policy.version, result.obs, result.done, result.interrupted)));
      }
      if (result.done || result.interrupted) {
        returns.push([policy.version, episodeReturn]);
        episodeReturn = 0;
        obs = env.reset();
      } else {
        obs = result.obs;
      }
    }
    for (const ack of await Promise.all(acks)) {
      accepted += ack.accepted_steps;
      dropped += ack.dropped_steps;
    }
    submitted += rolloutSteps;
    if (rolloutSteps === bufferSize) { // a full buffer: the service trains and publishes a new version
      const next = await watcher.next();
      policy = next.load();
    }
  }
  await stream.close();

  // The newest version WatchPolicy pushed, fetched again with GetPolicy: same bytes, same SHA-256.
  const newest = watcher.seen[watcher.seen.length - 1];
  const fetched = await retryTransient(() => client.getPolicy(args.behavior, newest.version), retry);
  await watcher.stop();
  client.close();
  const mean = (version) => {
    const r = returns.filter(([v]) => v === version).map(([, g]) => g);
    return r.length ? Number((r.reduce((a, b) => a + b, 0) / r.length).toFixed(4)) : null;
  };
  const summary = {
    ok: true,
    behavior: args.behavior,
    initial_version: initial.version,
    initial_sha256_ok: initial.sha256Ok,
    versions_seen: watcher.seen.map((b) => b.version),
    fetched_version: fetched.version,
    fetched_sha256: fetched.sha256,
    sha256_ok: fetched.sha256Ok && fetched.sha256 === newest.sha256 && fetched.data.equals(newest.data),
    steps_submitted: submitted,
    steps_accepted: accepted,
    steps_dropped: dropped,
    episodes: returns.length,
    mean_return_initial_policy: mean(initial.version),
    mean_return_last_policy: mean(returns.length ? returns[returns.length - 1][0] : -1),
    // Recoveries from transient failures (a trainer restart): stream reopenings and GetPolicy retries.
    reconnects: stream.reconnects + watcher.reconnects + policyRetries,
    submit_reconnects: stream.reconnects,
    watch_reconnects: watcher.reconnects,
    get_policy_retries: policyRetries,
  };
  console.log(JSON.stringify(summary));
  if (!summary.sha256_ok) throw new Error(`policy ${fetched.version}: GetPolicy and WatchPolicy disagree on the bytes`);
}

main().then(() => process.exit(0), (err) => {
  const what = err.codeName ? `gRPC ${err.codeName} (${err.code}): ${err.details}` : err.message;
  console.error(`train_corridor: failed: ${what}`);
  process.exit(1);
});
