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
   *   token; default env LUDUS_AUTH_TOKEN), credentials (grpc ChannelCredentials; default insecure)
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
    });
  }

  close() { this.stub.close(); }

  _metadata() {
    const md = new grpc.Metadata({ waitForReady: true }); // queue calls while the server starts
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
   * `afterVersion`; 0 = start with the current one). `cancel()` ends the iteration cleanly. */
  watchPolicy(behaviorName, { afterVersion = 0, versionsOnly = false, format = 'safetensors' } = {}) {
    const call = this.stub.WatchPolicy(
      { behavior_name: behaviorName, after_version: afterVersion, format: policyFormat(format), versions_only: versionsOnly },
      this._metadata());
    async function* blobs() {
      const assembler = new PolicyAssembler();
      try {
        for await (const chunk of call) {
          const blob = assembler.push(chunk);
          if (blob) yield blob;
        }
      } catch (err) {
        if (err.code === grpc.status.CANCELLED) return; // our own cancel()
        throw LudusError.fromGrpc(err);
      }
    }
    const iterator = blobs();
    return { [Symbol.asyncIterator]: () => iterator, cancel: () => call.cancel() };
  }
}

module.exports = {
  LudusClient, LudusError, PolicyAssembler, encodeTensor, decodeTensor, toStruct, fromStruct, loadPolicy, DEFAULT_PROTO,
  status: grpc.status,
};
