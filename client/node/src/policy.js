'use strict';
/**
 * Acting with a policy the service publishes, in plain JavaScript.
 *
 * GetPolicy / WatchPolicy deliver a safetensors file: an 8-byte little-endian header length, a JSON
 * header ({name: {dtype, shape, data_offsets}, "__metadata__": {...}}), then raw little-endian data.
 * Its metadata "ludus.architecture" describes the actor. This module evaluates the vector-observation
 * MLP format "ludus.mlp_actor.v1" the way the Python SDK's LocalPolicy does: optional running-mean
 * normalisation -> dense body layers with the given activation -> Gaussian head (continuous) and one
 * categorical head per discrete branch. Visual, entity, goal and recurrent policies ("ludus.actor.v2")
 * are refused with a clear error: use the Python SDK or the ONNX export for those.
 */

function parseSafetensors(buffer) {
  if (buffer.length < 8) throw new Error('not a safetensors file: shorter than its 8-byte header length');
  const headerLength = Number(buffer.readBigUInt64LE(0));
  if (headerLength > buffer.length - 8) throw new Error('not a safetensors file: header length exceeds the data');
  const header = JSON.parse(buffer.subarray(8, 8 + headerLength).toString('utf8'));
  const base = 8 + headerLength;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (info.dtype !== 'F32') throw new Error(`tensor ${name}: dtype ${info.dtype}, expected F32`);
    const [begin, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    if (end - begin !== count * 4 || base + end > buffer.length) throw new Error(`tensor ${name}: bad data_offsets`);
    const data = new Float32Array(count);
    for (let i = 0; i < count; i++) data[i] = buffer.readFloatLE(base + begin + 4 * i);
    tensors[name] = { shape: info.shape, data };
  }
  return { metadata: header.__metadata__ || {}, tensors };
}

const ACTIVATIONS = {
  swish: (x) => x * 0.5 * (1 + Math.tanh(0.5 * x)), // x * sigmoid(x), overflow-free
  tanh: Math.tanh,
  relu: (x) => Math.max(x, 0),
};

/** y = W x + b for a torch Linear weight [out, in] stored row-major. */
function linear(weight, bias, x) {
  const [rows, cols] = weight.shape;
  if (cols !== x.length) throw new Error(`layer expects ${cols} inputs, got ${x.length}`);
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sum = bias.data[r];
    for (let c = 0; c < cols; c++) sum += weight.data[r * cols + c] * x[c];
    y[r] = sum;
  }
  return y;
}

function gaussian(random) {
  // Box-Muller; 1 - random() is in (0, 1] so the log is finite.
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

class MlpPolicy {
  constructor(tensors, architecture, version, behaviorName) {
    if (architecture.format !== 'ludus.mlp_actor.v1') {
      throw new Error(`policy format ${architecture.format} is not evaluated in JavaScript (only ludus.mlp_actor.v1: ` +
        'vector observations, no memory); use the Python SDK or the ONNX export');
    }
    this.tensors = tensors;
    this.arch = architecture;
    this.version = version;
    this.behaviorName = behaviorName;
    this.activation = ACTIVATIONS[architecture.activation];
    if (!this.activation) throw new Error(`unknown activation ${architecture.activation}`);
    this.continuousSize = architecture.continuous_size;
    this.branches = architecture.discrete_branches;
  }

  /** Hidden features of one agent's observations (an array of flat vectors, in spec order). */
  hidden(observations) {
    let x = Float64Array.from(observations.flatMap((o) => Array.from(o)));
    if (this.arch.normalize) {
      const mean = this.tensors['normalizer.mean'].data;
      const variance = this.tensors['normalizer.var'].data;
      const clamp = this.arch.normalize_clamp;
      x = x.map((v, i) => Math.min(clamp, Math.max(-clamp, (v - mean[i]) / Math.sqrt(variance[i] + this.arch.normalize_epsilon))));
    }
    for (const layer of this.arch.body_layers) {
      x = linear(this.tensors[`${layer}.weight`], this.tensors[`${layer}.bias`], x).map(this.activation);
    }
    return x;
  }

  /**
   * Actions for ONE agent. Returns {continuous, continuousLogProbs, discrete, discreteLogProbs}: the
   * raw Gaussian samples (apply clamp(a, -3, 3) / 3 in the simulator) and the chosen option per
   * branch, with the log-probabilities trajectories must carry. `random` defaults to Math.random.
   */
  act(observations, { deterministic = this.arch.deterministic, random = Math.random } = {}) {
    const h = this.hidden(observations);
    const out = { continuous: [], continuousLogProbs: [], discrete: [], discreteLogProbs: [] };
    if (this.continuousSize) {
      const mu = linear(this.tensors['continuous.mu.weight'], this.tensors['continuous.mu.bias'], h);
      const logStd = this.tensors['continuous.log_std'].data;
      mu.forEach((m, i) => {
        const a = deterministic ? m : m + Math.exp(logStd[i]) * gaussian(random);
        out.continuous.push(a);
        out.continuousLogProbs.push(-0.5 * ((a - m) / Math.exp(logStd[i])) ** 2 - logStd[i] - 0.5 * Math.log(2 * Math.PI));
      });
    }
    this.branches.forEach((size, b) => {
      const logits = linear(this.tensors[`discrete.${b}.weight`], this.tensors[`discrete.${b}.bias`], h);
      const max = Math.max(...logits);
      const logZ = Math.log(logits.reduce((s, l) => s + Math.exp(l - max), 0)) + max;
      const logP = Array.from(logits, (l) => l - logZ);
      let choice = logP.indexOf(Math.max(...logP));
      if (!deterministic) { // inverse-CDF sampling from the categorical distribution
        let u = random();
        choice = size - 1;
        for (let i = 0; i < size; i++) { u -= Math.exp(logP[i]); if (u < 0) { choice = i; break; } }
      }
      out.discrete.push(choice);
      out.discreteLogProbs.push(logP[choice]);
    });
    return out;
  }
}

/** A MlpPolicy from the bytes of a published safetensors policy. */
function loadPolicy(buffer) {
  const { metadata, tensors } = parseSafetensors(buffer);
  if (!metadata['ludus.architecture']) throw new Error('safetensors file has no ludus.architecture metadata');
  return new MlpPolicy(tensors, JSON.parse(metadata['ludus.architecture']), Number(metadata['ludus.version']), metadata['ludus.behavior'] || '');
}

module.exports = { parseSafetensors, MlpPolicy, loadPolicy };
