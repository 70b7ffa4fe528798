// Acting with a published policy in C++: reads the safetensors file that GetPolicy / WatchPolicy
// deliver and evaluates its actor for one agent, the way the Python SDK's LocalPolicy does.
//
// Scope: architecture "ludus.mlp_actor.v1" (vector observations -> optional normaliser -> MLP body
// -> Gaussian head for continuous actions and categorical heads for discrete branches). Visual,
// entity, goal-conditioned and recurrent policies ("ludus.actor.v2") are refused with a clear
// error; Unity/Unreal users who need those can fetch POLICY_FORMAT_ONNX and run it in their engine.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>

namespace ludus {

struct SafetensorsTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;  // F32 only: the service publishes float32 weights
};

struct SafetensorsFile {
  std::map<std::string, SafetensorsTensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__": ludus.architecture, ludus.version, ...
};

// Parses a safetensors file (8-byte little-endian header length, JSON header, raw data); throws
// std::invalid_argument on anything malformed (offsets outside the data, sizes not matching shapes).
SafetensorsFile ParseSafetensors(const std::string& data);

// The actor's output for one agent: what a Trajectory step records.
struct Action {
  std::vector<float> continuous;            // raw Gaussian samples; apply clamp(a, -3, 3) / 3 in the sim
  std::vector<float> continuous_log_probs;
  std::vector<int32_t> discrete;            // one choice per branch
  std::vector<float> discrete_log_probs;
};

class MlpPolicy {
 public:
  static MlpPolicy FromSafetensors(const std::string& data);

  // `observation`: the agent's vector observations concatenated in spec order. `deterministic`:
  // take the mode instead of sampling; unset = the architecture's "deterministic" flag.
  Action Act(const std::vector<float>& observation, std::mt19937& rng,
             std::optional<bool> deterministic = std::nullopt) const;

  int64_t version() const { return version_; }
  int observation_size() const { return observation_size_; }

 private:
  struct Layer {
    int in = 0, out = 0;
    std::vector<float> weight;  // [out, in], torch's nn.Linear layout
    std::vector<float> bias;    // [out]
  };
  std::vector<float> Hidden(const std::vector<float>& observation) const;
  static Layer LoadLayer(const SafetensorsFile& file, const std::string& prefix);

  int64_t version_ = 0;
  int observation_size_ = 0;
  std::string activation_;
  bool deterministic_ = false;
  bool normalize_ = false;
  double normalize_clamp_ = 5.0, normalize_epsilon_ = 1e-8;
  std::vector<float> norm_mean_, norm_var_;
  std::vector<Layer> body_;
  int continuous_size_ = 0;
  Layer mu_;
  std::vector<float> log_std_;
  std::vector<Layer> branches_;
};

}  // namespace ludus
