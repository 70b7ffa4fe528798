'use strict';
/**
 * Ludus Node.js client: a small wrapper over the `ludus.v1.Trainer` gRPC service.
 *
 * The proto is loaded at runtime (no generated code): by default the repository's
 * proto/ludus/v1/trainer.proto, overridable with the `protoPath` option or env LUDUS_PROTO.
 * Messages use the proto's own snake_case field names (proto-loader `keepCase`), so the field-by-field
 * documentation in trainer.proto applies literally.
 *
 * - Tensors: encodeTensor / decodeTensor convert typed arrays to and from the wire `Tensor`
 *   (dtype, shape, raw little-endian bytes), checking byte length = product(shape) * itemsize.
 * - Every unary call has a deadline (timeoutMs, default 30 s) and waits for the channel to be ready.
 * - Failures reject with LudusError carrying the gRPC status code (number and name) and the server's
 *   message, which names the offending field (e.g. INVALID_ARGUMENT "trajectory.rewards: ...").
 */
const crypto = require('crypto');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { loadPolicy } = require('./policy');

const DEFAULT_PROTO = path.resolve(__dirname, '..', '..', '..', 'proto', 'ludus', 'v1', 'trainer.proto');
const MAX_MESSAGE_BYTES = 256 * 1024 * 1024; // the server's limit; large observations must pass

// ---------------------------------------------------------------------------------------------
// Errors

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** A failed call: `code` is the numeric gRPC status, `codeName` its name, `details` the server's message. */
class LudusError extends Error {
  constructor(code, details) {
    const codeName = STATUS_NAMES[code] || `UNKNOWN_CODE_${code}`;
    super(`${codeName}: ${details}`);
    this.name = 'LudusError';
    this.code = code;
    this.codeName = codeName;
    this.details = details;
  }

  static fromGrpc(err) {
    if (err instanceof LudusError) return err;
    return new LudusError(typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN, err.details || err.message);
  }
}

// ---------------------------------------------------------------------------------------------
// Tensors: raw little-endian bytes. DataView with an explicit littleEndian flag keeps this correct on
// any host byte order and for Buffers whose byteOffset is not 4-aligned (gRPC hands out slices).

const DTYPES = {
  DATA_TYPE_FLOAT32: { size: 4, Array: Float32Array, get: 'getFloat32', set: 'setFloat32' },
  DATA_TYPE_INT32: { size: 4, Array: Int32Array, get: 'getInt32', set: 'setInt32' },
  DATA_TYPE_UINT8: { size: 1, Array: Uint8Array, get: 'getUint8', set: 'setUint8' },
  DATA_TYPE_BOOL: { size: 1, Array: Uint8Array, get: 'getUint8', set: 'setUint8' },
};

function dtypeName(dtype) {
  const name = String(dtype).startsWith('DATA_TYPE_') ? String(dtype) : `DATA_TYPE_${String(dtype).toUpperCase()}`;
  if (!DTYPES[name]) throw new TypeError(`unsupported dtype ${dtype}; this client handles ${Object.keys(DTYPES).join(', ')}`);
  return name;
}

/** Encode `values` (array or typed array, row-major) with `shape` as a wire Tensor of `dtype`
 * ('FLOAT32', 'INT32', 'UINT8', 'BOOL' or the full DATA_TYPE_* name). */
function encodeTensor(values, shape, dtype = 'FLOAT32') {
  const name = dtypeName(dtype);
  const { size, set } = DTYPES[name];
  const count = shape.reduce((a, b) => a * b, 1);
  if (values.length !== count) {
    throw new RangeError(`tensor has ${values.length} values but shape [${shape}] needs ${count}`);
  }
  const raw = Buffer.alloc(count * size);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < count; i++) {
    const v = name === 'DATA_TYPE_BOOL' ? (values[i] ? 1 : 0) : values[i];
    if (size === 1) view[set](i, v); else view[set](i * size, v, true);
  }
  return { dtype: name, shape: shape.slice(), raw_data: raw };
}

/** Decode a wire Tensor into { dtype, shape, data: typed array }; `field` names it in errors. */
function decodeTensor(tensor, field = 'tensor') {
  const name = tensor.dtype; // a DATA_TYPE_* name: the client loads enums as strings
  if (!DTYPES[name]) throw new LudusError(grpc.status.DATA_LOSS, `${field}: unsupported dtype ${tensor.dtype}`);
  const { size, Array: TypedArray, get } = DTYPES[name];
  const shape = (tensor.shape || []).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const raw = tensor.raw_data || Buffer.alloc(0);
  if (raw.length !== count * size) {
    throw new LudusError(grpc.status.DATA_LOSS,
      `${field}: raw_data has ${raw.length} bytes but shape [${shape}] x ${name} needs ${count * size}`);
  }
  const data = new TypedArray(count);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < count; i++) data[i] = size === 1 ? view[get](i) : view[get](i * size, true);
  return { dtype: name, shape, data };
}

// ---------------------------------------------------------------------------------------------
// google.protobuf.Struct <-> plain objects. proto-loader hands Struct over as its raw message form,
// and its built-in well-known types name Value's fields in camelCase even with keepCase.

function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}

function toStruct(obj) {
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, toValue(v)])) };
}

function fromValue(v) {
  switch (v.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'listValue': return (v.listValue.values || []).map(fromValue);
    case 'structValue': return fromStruct(v.structValue);
    default: return null;
  }
}

function fromStruct(s) {
  return Object.fromEntries(Object.entries((s && s.fields) || {}).map(([k, v]) => [k, fromValue(v)]));
}

// ---------------------------------------------------------------------------------------------
// Policies arrive as chunks; reassemble them, checking offsets, total size and SHA-256.

class PolicyAssembler {
  constructor() { this.parts = []; this.size = 0; }

  /** Feed one PolicyChunk; returns a whole policy blob on the version's last chunk, else null. */
  push(chunk) {
    const offset = Number(chunk.offset);
    if (offset !== this.size) {
      throw new LudusError(grpc.status.DATA_LOSS, `policy ${chunk.version}: chunk at offset ${offset}, expected ${this.size}`);
    }
    this.parts.push(chunk.data);
    this.size += chunk.data.length;
    if (!chunk.last) return null;
    const data = Buffer.concat(this.parts);
    this.parts = [];
    this.size = 0;
    const announcement = data.length === 0 && Number(chunk.total_size) > 0; // WatchPolicy versions_only
    const sha256 = crypto.createHash('sha256').update(data).digest('hex');
    if (!announcement && (data.length !== Number(chunk.total_size) || sha256 !== chunk.sha256)) {
      throw new LudusError(grpc.status.DATA_LOSS,
        `policy ${chunk.version}: received ${data.length} bytes with sha256 ${sha256}, ` +
        `server announced ${chunk.total_size} bytes with sha256 ${chunk.sha256}`);
    }
    return {
      behaviorName: chunk.behavior_name,
      version: Number(chunk.version),
      data,
      sha256: chunk.sha256,
      sha256Ok: !announcement, // verified above (an announcement carries no bytes to verify)
      trainedSteps: Number(chunk.trained_steps),
      format: chunk.format === 'POLICY_FORMAT_ONNX' || chunk.format === 2 ? 'onnx' : 'safetensors',
      load() {
        if (this.format === 'onnx') throw new Error('an ONNX model: run it with onnxruntime (or an engine), not policy.js');
        return loadPolicy(data);
      },
    };
  }
}

// ---------------------------------------------------------------------------------------------
// The client

function loadTrainerService(protoPath) {
  const definition = protoLoader.loadSync(path.resolve(protoPath), {
    keepCase: true, // snake_case field names, exactly as documented in trainer.proto
    longs: Number, // int64 step counts and versions stay far below 2^53
    enums: String, // enum values by name (drop_reason, dtype, ...)
    bytes: Buffer,
    defaults: true, // absent proto3 scalars read as 0 / '' / false, like every other gRPC binding
    oneofs: true, // google.protobuf.Value gets `kind` naming its set field
    // Imports resolve from the proto root (trainer.proto lives at <root>/ludus/v1/); google/protobuf/*
    // comes with proto-loader.
    includeDirs: [path.resolve(path.dirname(protoPath), '..', '..')],
  });
  return grpc.loadPackageDefinition(definition).ludus.v1.Trainer;
}

/** The proto enum name of a policy format: 'safetensors' or 'onnx'. */
function policyFormat(format) {
  const names = { safetensors: 'POLICY_FORMAT_SAFETENSORS', onnx: 'POLICY_FORMAT_ONNX' };
  if (!(format in names)) throw new Error(`format must be 'safetensors' or 'onnx', got ${JSON.stringify(format)}`);
  return names[format];
}

class LudusClient {
  /**
   * @param {string} target host:port of a ludus-server
   * @param {object} [options] protoPath, timeoutMs (unary deadline, default 30000), token (bearer
   *   token; default env LUDUS_AUTH_TOKEN), credentials (grpc ChannelCredentials; default insecure),
   *   maxReconnectBackoffMs (cap of the channel's own reconnect backoff, default 10000)
   */
  constructor(target, options = {}) {
    const protoPath = options.protoPath || process.env.LUDUS_PROTO || DEFAULT_PROTO;
    const Trainer = loadTrainerService(protoPath);
    this.target = target;
    this.timeoutMs = options.timeoutMs || 30000;
    this.token = options.token !== undefined ? options.token : (process.env.LUDUS_AUTH_TOKEN || '');
    this.stub = new Trainer(target, options.credentials || grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      // After a server restart the channel reconnects by itself; cap its reconnect backoff (grpc-js
      // default: 120 s) so a restarted trainer is found again within seconds.
      'grpc.max_reconnect_backoff_ms': options.maxReconnectBackoffMs || 10000,
    });
  }

  close() { this.stub.close(); }

  _metadata(waitForReady = true) {
    const md = new grpc.Metadata({ waitForReady }); // by default, queue calls while the server (re)starts
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    return md;
  }

  _deadline(ms) { return new Date(Date.now() + (ms || this.timeoutMs)); }

  _unary(method, request) {
    return new Promise((resolve, reject) => {
      this.stub[method](request, this._metadata(), { deadline: this._deadline() }, (err, response) => {
        if (err) reject(LudusError.fromGrpc(err)); else resolve(response);
      });
    });
  }

  /** Resolve once the channel is connected; UNAVAILABLE LudusError after `timeoutMs`. */
  waitReady(timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(this._deadline(timeoutMs), (err) => {
        if (err) reject(new LudusError(grpc.status.UNAVAILABLE, `no Ludus server at ${this.target}: ${err.message}`));
        else resolve();
      });
    });
  }

  /** RegisterBehavior. `spec`: {observations: [{name, shape, kind}], actions: {continuous_size,
   * discrete_branches}}; `settings`: ML-Agents trainer settings as a plain object. */
  async register(behaviorName, spec, settings) {
    const request = { behavior_name: behaviorName, spec };
    if (settings) request.settings = toStruct(settings);
    const r = await this._unary('RegisterBehavior', request);
    return {
      policyVersion: r.policy_version,
      created: r.created,
      settings: fromStruct(r.effective_settings),
      rewardSignals: r.reward_signals,
    };
  }

  async describe(behaviorName) {
    const r = await this._unary('DescribeBehavior', { behavior_name: behaviorName });
    return { ...r, effective_settings: fromStruct(r.effective_settings) };
  }

  async listBehaviors() {
    return (await this._unary('ListBehaviors', {})).behavior_names;
  }

  /** Open a SubmitTrajectories stream. `send(trajectory)` returns a promise of that trajectory's
   * acknowledgement (the server answers once per request, in order); `close()` ends the stream and
   * resolves when the server has finished. A stream error rejects every pending acknowledgement. */
  openSubmitStream(behaviorName) {
    const call = this.stub.SubmitTrajectories(this._metadata());
    const pending = []; // FIFO of {resolve, reject}, matched to responses by order
    let failure = null;
    const fail = (err) => {
      failure = failure || LudusError.fromGrpc(err);
      while (pending.length) pending.shift().reject(failure);
    };
    const finished = new Promise((resolve, reject) => {
      call.on('data', (ack) => {
        const waiter = pending.shift();
        if (waiter) waiter.resolve(ack);
      });
      call.on('error', (err) => { fail(err); reject(failure); });
      call.on('end', () => {
        if (pending.length) fail(new LudusError(grpc.status.DATA_LOSS, `stream ended with ${pending.length} trajectories unacknowledged`));
        resolve();
      });
    });
    finished.catch(() => {}); // reported through send()/close(); avoid an unhandled rejection
    return {
      send(trajectory) {
        if (failure) return Promise.reject(failure);
        return new Promise((resolve, reject) => {
          pending.push({ resolve, reject });
          call.write({ behavior_name: behaviorName, trajectory });
        });
      },
      close() { call.end(); return finished; },
      cancel() { call.cancel(); },
    };
  }

  /** Send trajectories on one stream; resolves with every acknowledgement, in order. */
  async submitTrajectories(behaviorName, trajectories) {
    const stream = this.openSubmitStream(behaviorName);
    const acks = Promise.all(trajectories.map((t) => stream.send(t)));
    acks.catch(() => {}); // a stream error surfaces from close() first; avoid an unhandled rejection
    await stream.close();
    return acks;
  }

  /** GetPolicy: version `version` (0 = latest) as one blob with verified SHA-256: safetensors
   * weights (`format: 'safetensors'`, default) or the ONNX model engines run (`format: 'onnx'`). */
  getPolicy(behaviorName, version = 0, { format = 'safetensors' } = {}) {
    return new Promise((resolve, reject) => {
      const call = this.stub.GetPolicy(
        { behavior_name: behaviorName, version, format: policyFormat(format) },
        this._metadata(), { deadline: this._deadline() });
      const assembler = new PolicyAssembler();
      const blobs = [];
      call.on('data', (chunk) => {
        try {
          const blob = assembler.push(chunk);
          if (blob) blobs.push(blob);
        } catch (err) { call.cancel(); reject(err); }
      });
      call.on('error', (err) => reject(LudusError.fromGrpc(err)));
      call.on('end', () => {
        if (blobs.length === 1) resolve(blobs[0]);
        else reject(new LudusError(grpc.status.DATA_LOSS, `expected one policy, received ${blobs.length}`));
      });
    });
  }

  /** WatchPolicy: an async iterable of policy blobs, one per new version (newer than
   * `afterVersion`; 0 = start with the current one). `cancel()` ends the iteration cleanly.
   *
   * With `reconnect: true` the watch survives a server restart: when it breaks with a transient status
   * (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) it is reopened with exponential backoff (200 ms
   * doubling up to `maxBackoffMs`, default 10000) and the iteration goes on; it gives up with the last
   * error once no policy has arrived for `giveUpAfterMs` (default 300000) since the break. A reopened
   * watch starts with the server's current version, flagged `reconnected: true`: it may repeat the last
   * version, or precede it when the server resumed from an older checkpoint. `reconnects` counts the
   * reopenings; `onReconnect(error, count)` is called before each. */
  watchPolicy(behaviorName, {
    afterVersion = 0, versionsOnly = false, format = 'safetensors',
    reconnect = false, maxBackoffMs = 10000, giveUpAfterMs = 300000, onReconnect = null,
  } = {}) {
    const state = { call: null, cancelled: false, reconnects: 0, timer: null };
    let onCancel;
    const cancelled = new Promise((resolve) => { onCancel = resolve; });
    const open = (after) => this.stub.WatchPolicy(
      { behavior_name: behaviorName, after_version: after, format: policyFormat(format), versions_only: versionsOnly },
      this._metadata(!reconnect));
    const client = this;
    // Without reconnect the call opens right away, as it always has; with it, once the channel is ready.
    let first = reconnect ? null : open(afterVersion);
    state.call = first;
    async function* blobs() {
      let after = afterVersion;
      let backoff = INITIAL_BACKOFF_MS;
      let failingSince = null;
      let reconnected = false;
      let lastError = null;
      while (!state.cancelled) {
        if (reconnect) {
          // Wait (at most until giveUpAfterMs) for the channel, then open the call without waitForReady:
          // a channel lost in between then fails the call at once instead of queueing it indefinitely.
          const since = failingSince === null ? Date.now() : failingSince;
          const ready = await Promise.race([channelReady(client, since + giveUpAfterMs, () => state.cancelled), cancelled]);
          if (state.cancelled) return;
          if (ready !== 'ready') throw lastError ? giveUpError(lastError, giveUpAfterMs) : notReadyError(client, ready);
        }
        const call = state.call = first || open(after);
        first = null;
        const assembler = new PolicyAssembler();
        try {
          for await (const chunk of call) {
            const blob = assembler.push(chunk);
            if (!blob) continue;
            backoff = INITIAL_BACKOFF_MS;
            failingSince = null;
            if (reconnected) { blob.reconnected = true; reconnected = false; }
            yield blob;
          }
          // The server ended the watch: done, unless reconnecting (a server that goes away ends it so).
          if (!reconnect || state.cancelled) return;
          throw new LudusError(grpc.status.UNAVAILABLE, 'the server ended the watch');
        } catch (err) {
          if (err.code === grpc.status.CANCELLED && (state.cancelled || !reconnect)) return; // our own cancel()
          const error = LudusError.fromGrpc(err);
          if (!reconnect || !isTransient(error)) throw error;
          failingSince = failingSince === null ? Date.now() : failingSince;
          if (Date.now() - failingSince >= giveUpAfterMs) throw giveUpError(error, giveUpAfterMs);
          lastError = error;
          state.reconnects += 1;
          if (onReconnect) onReconnect(error, state.reconnects);
          await Promise.race([new Promise((resolve) => { state.timer = setTimeout(resolve, backoff); }), cancelled]);
          backoff = Math.min(backoff * 2, maxBackoffMs);
          after = 0; // start again with the server's current version, whatever it restored
          reconnected = true;
        }
      }
    }
    const iterator = blobs();
    return {
      [Symbol.asyncIterator]: () => iterator,
      cancel: () => {
        state.cancelled = true;
        clearTimeout(state.timer);
        onCancel();
        if (state.call) state.call.cancel();
      },
      get reconnects() { return state.reconnects; },
    };
  }

  /** A ReliableTrajectoryStream (see there) submitting to `behaviorName` on this client. */
  openReliableStream(behaviorName, options = {}) {
    return new ReliableTrajectoryStream(this, behaviorName, options);
  }
}

// ---------------------------------------------------------------------------------------------
// Surviving a trainer restart: transient statuses are retried, everything else is final.

/** UNAVAILABLE (server down or restarting), RESOURCE_EXHAUSTED (intake full), DEADLINE_EXCEEDED. */
const TRANSIENT_CODES = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED, grpc.status.DEADLINE_EXCEEDED]);
const INITIAL_BACKOFF_MS = 200;

function isTransient(err) { return Boolean(err) && TRANSIENT_CODES.has(err.code); }

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

/** Wait for the client's channel to be ready: 'ready', or 'deadline' at `deadline` (ms since the epoch),
 * 'stopped' once `stopped()` is true, 'closed' when the client was closed. Waits in slices of at most
 * 1 s so that no pending wait keeps the process alive long after a cancellation. */
function channelReady(client, deadline, stopped) {
  return new Promise((resolve) => {
    const step = () => {
      if (stopped()) { resolve('stopped'); return; }
      const remaining = deadline - Date.now();
      if (remaining <= 0) { resolve('deadline'); return; }
      client.stub.waitForReady(new Date(Date.now() + Math.min(remaining, 1000)), (err) => {
        if (!err) resolve('ready');
        else if (/closed/.test(err.message)) resolve('closed');
        else step();
      });
    };
    step();
  });
}

function notReadyError(client, why) {
  return new LudusError(grpc.status.UNAVAILABLE, why === 'closed' ? 'the client was closed'
    : `no Ludus server at ${client.target}: not connected before the deadline`);
}

function giveUpError(last, giveUpAfterMs) {
  return new LudusError(last.code, `gave up after ${giveUpAfterMs / 1000} s of failures; last: ${last.details}`);
}

/** Call `fn()` (returning a promise) again while it rejects with a transient status, sleeping 200 ms
 * doubling up to `maxBackoffMs` between tries, for at most `giveUpAfterMs`; any other error, or the last
 * transient one after that, is thrown. `onRetry(error, attempt)` is called before each new try.
 * E.g. `await retryTransient(() => client.getPolicy('MyAgent'))`. */
async function retryTransient(fn, { maxBackoffMs = 10000, giveUpAfterMs = 300000, onRetry = null } = {}) {
  const started = Date.now();
  let backoff = INITIAL_BACKOFF_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isTransient(err)) throw err;
      if (Date.now() - started + backoff > giveUpAfterMs) throw giveUpError(err, giveUpAfterMs);
      if (onRetry) onRetry(err, attempt);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, maxBackoffMs);
    }
  }
}

/**
 * Pipelined, loss-free trajectory submission on one long-lived SubmitTrajectories stream that survives
 * a trainer restart (the Node counterpart of the Python SDK's TrajectoryStream).
 *
 * `submit(trajectory)` returns a promise of that trajectory's acknowledgement. Up to `maxInFlight`
 * (default 64) trajectories are on the wire unacknowledged at once; later ones wait, in order, in the
 * client. Every trajectory stays pending until the server acknowledges it. When the stream breaks with
 * a transient status (UNAVAILABLE: server restarting; RESOURCE_EXHAUSTED: intake full;
 * DEADLINE_EXCEEDED) it is reopened after an exponential backoff (200 ms doubling up to `maxBackoffMs`,
 * default 10000) once the channel is ready again, and the unacknowledged trajectories are sent again,
 * in order. Delivery is at least once: a trajectory whose acknowledgement was lost in the break is sent
 * again. `reconnects` counts the breaks. A permanent status (INVALID_ARGUMENT, NOT_FOUND, ...), or a
 * transient one lasting `giveUpAfterMs` (default 300000) without any acknowledgement, rejects every
 * pending promise and every later call with a LudusError carrying the status.
 *
 * `flush()` resolves once every submitted trajectory is acknowledged; `close()` flushes, then ends the
 * stream; `cancel()` abandons what is pending (CANCELLED). `acceptedSteps`, `droppedSteps`, `latest`
 * (the last acknowledgement) and `unacknowledged` describe the progress; `onReconnect(error, count)`
 * is called at each break.
 */
class ReliableTrajectoryStream {
  constructor(client, behaviorName, { maxInFlight = 64, maxBackoffMs = 10000, giveUpAfterMs = 300000, onReconnect = null } = {}) {
    if (!(maxInFlight >= 1)) throw new RangeError(`maxInFlight must be >= 1, got ${maxInFlight}`);
    this.client = client;
    this.behaviorName = behaviorName;
    this.maxInFlight = maxInFlight;
    this.maxBackoffMs = maxBackoffMs;
    this.giveUpAfterMs = giveUpAfterMs;
    this.onReconnect = onReconnect;
    this.reconnects = 0;
    this.acceptedSteps = 0;
    this.droppedSteps = 0;
    this.latest = null;
    this._pending = []; // {request, resolve, reject}, oldest first; the head ones are on the wire
    this._attempt = null; // the current call: {call, inFlight (head entries written on it), dead}
    this._flushWaiters = [];
    this._error = null;
    this._closing = false;
    this._backoff = INITIAL_BACKOFF_MS;
    this._failingSince = null; // first break since the last acknowledgement
    this._reopenTimer = null;
  }

  get unacknowledged() { return this._pending.length; }

  submit(trajectory) {
    if (this._error) return Promise.reject(this._error);
    if (this._closing) return Promise.reject(new LudusError(grpc.status.FAILED_PRECONDITION, 'submit() after close()'));
    return new Promise((resolve, reject) => {
      this._pending.push({ request: { behavior_name: this.behaviorName, trajectory }, resolve, reject });
      this._pump();
    });
  }

  flush() {
    if (this._error) return Promise.reject(this._error);
    if (!this._pending.length) return Promise.resolve();
    return new Promise((resolve, reject) => this._flushWaiters.push({ resolve, reject }));
  }

  async close() {
    try {
      await this.flush();
    } catch (err) {
      this._closing = true;
      this._stop();
      throw err;
    }
    this._closing = true;
    const attempt = this._attempt;
    clearTimeout(this._reopenTimer);
    if (!attempt || attempt.dead || !attempt.call) { this._stop(); return; }
    await new Promise((resolve) => { attempt.onDone = resolve; attempt.call.end(); });
  }

  cancel() {
    this._closing = true;
    this._fail(new LudusError(grpc.status.CANCELLED, 'stream cancelled by the client'));
  }

  // -- internals -------------------------------------------------------------------------------

  /** Open a call when there is something to send, then write pending trajectories up to maxInFlight. */
  _pump() {
    if (this._error || this._reopenTimer) return;
    const attempt = this._attempt;
    if (!attempt || attempt.dead) {
      if (this._pending.length) this._open();
      return;
    }
    if (!attempt.call) return; // still waiting for the channel
    while (attempt.inFlight < this._pending.length && attempt.inFlight < this.maxInFlight) {
      attempt.call.write(this._pending[attempt.inFlight].request);
      attempt.inFlight += 1;
    }
  }

  _open() {
    const attempt = { call: null, inFlight: 0, dead: false, onDone: null };
    this._attempt = attempt;
    // Wait (bounded by giveUpAfterMs) for the channel, then open the call without waitForReady so that a
    // channel lost in between fails the call at once instead of leaving it queued forever.
    const since = this._failingSince === null ? Date.now() : this._failingSince;
    channelReady(this.client, since + this.giveUpAfterMs, () => attempt.dead).then((ready) => {
      if (attempt.dead || this._attempt !== attempt) return;
      if (ready !== 'ready') {
        this._failingSince = since;
        const error = notReadyError(this.client, ready);
        if (ready === 'closed') this._fail(error); else this._broken(attempt, error);
        return;
      }
      const call = attempt.call = this.client.stub.SubmitTrajectories(this.client._metadata(false));
      call.on('data', (ack) => this._acknowledged(attempt, ack));
      call.on('error', (e) => this._broken(attempt, LudusError.fromGrpc(e)));
      call.on('end', () => { // the server finished the call with OK (errors come as 'error' above)
        if (attempt.dead) return;
        if (this._pending.length && !this._error) {
          this._broken(attempt, new LudusError(grpc.status.UNAVAILABLE,
            `the server ended the stream with ${this._pending.length} trajectories unacknowledged`));
          return;
        }
        attempt.dead = true;
        if (attempt.onDone) attempt.onDone();
      });
      this._pump();
    });
  }

  _acknowledged(attempt, ack) {
    // Late acknowledgements of a broken call still count until the next call takes over.
    if (this._attempt !== attempt || attempt.inFlight === 0) return;
    const entry = this._pending.shift();
    attempt.inFlight -= 1;
    this._backoff = INITIAL_BACKOFF_MS;
    this._failingSince = null;
    this.latest = ack;
    this.acceptedSteps += Number(ack.accepted_steps) || 0;
    this.droppedSteps += Number(ack.dropped_steps) || 0;
    entry.resolve(ack);
    if (!this._pending.length) {
      const waiters = this._flushWaiters;
      this._flushWaiters = [];
      waiters.forEach((w) => w.resolve());
    }
    this._pump();
  }

  _broken(attempt, error) {
    if (attempt.dead) return;
    attempt.dead = true;
    if (attempt.call) attempt.call.cancel(); // no-op once the call has its status
    if (attempt.onDone) attempt.onDone();
    if (this._error || (this._closing && !this._pending.length)) return;
    if (!isTransient(error)) { this._fail(error); return; }
    const now = Date.now();
    if (this._pending.length && this._failingSince === null) this._failingSince = now;
    if (this._failingSince !== null && now - this._failingSince >= this.giveUpAfterMs) {
      this._fail(giveUpError(error, this.giveUpAfterMs));
      return;
    }
    this.reconnects += 1;
    if (this.onReconnect) this.onReconnect(error, this.reconnects);
    const delay = this._backoff;
    this._backoff = Math.min(this._backoff * 2, this.maxBackoffMs);
    this._reopenTimer = setTimeout(() => { this._reopenTimer = null; this._pump(); }, delay);
  }

  _fail(error) {
    if (!this._error) this._error = error;
    this._stop();
    const pending = this._pending;
    const waiters = this._flushWaiters;
    this._pending = [];
    this._flushWaiters = [];
    pending.forEach((p) => p.reject(this._error));
    waiters.forEach((w) => w.reject(this._error));
  }

  _stop() {
    clearTimeout(this._reopenTimer);
    this._reopenTimer = null;
    const attempt = this._attempt;
    if (attempt && !attempt.dead) {
      attempt.dead = true;
      if (attempt.call) attempt.call.cancel();
      if (attempt.onDone) attempt.onDone();
    }
  }
}

module.exports = {
  LudusClient, LudusError, PolicyAssembler, ReliableTrajectoryStream, encodeTensor, decodeTensor, toStruct, fromStruct,
  loadPolicy, retryTransient, isTransient, TRANSIENT_CODES, DEFAULT_PROTO,
  status: grpc.status,
};
