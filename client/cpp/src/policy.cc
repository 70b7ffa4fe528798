#include "ludus/policy.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace ludus {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

// Parses JSON into a google.protobuf.Struct: protobuf's JSON reader spares a JSON library dependency.
Struct ParseJson(const std::string& json, const std::string& what) {
  Struct parsed;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &parsed);
  if (!status.ok()) throw std::invalid_argument(what + ": invalid JSON: " + status.ToString());
  return parsed;
}

const Value& Field(const Struct& s, const std::string& key, const std::string& what) {
  auto it = s.fields().find(key);
  if (it == s.fields().end()) throw std::invalid_argument(what + ": missing \"" + key + "\"");
  return it->second;
}

bool Has(const Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  if (it == s.fields().end() || it->second.has_null_value()) return false;
  // Empty lists count as absent (e.g. "visual_encoders": []).
  return !(it->second.has_list_value() && it->second.list_value().values_size() == 0);
}

std::vector<int64_t> IntList(const Value& v, const std::string& what) {
  std::vector<int64_t> out;
  for (const Value& item : v.list_value().values()) {
    const double d = item.number_value();
    if (d < 0 || d != std::floor(d) || d > 9007199254740992.0) throw std::invalid_argument(what + ": not a non-negative integer");
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

const std::vector<float>& Values(const SafetensorsFile& file, const std::string& name) {
  auto it = file.tensors.find(name);
  if (it == file.tensors.end()) throw std::invalid_argument("policy: missing tensor " + name);
  return it->second.values;
}

constexpr double kLog2Pi = 1.8378770664093453;  // log(2 pi); M_PI is not standard C++ (MSVC)

float Swish(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace

SafetensorsFile ParseSafetensors(const std::string& data) {
  if (data.size() < 8) throw std::invalid_argument("safetensors: shorter than its 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(static_cast<unsigned char>(data[i])) << (8 * i);
  if (header_len > data.size() - 8) throw std::invalid_argument("safetensors: header length exceeds the file");
  const Struct header = ParseJson(data.substr(8, header_len), "safetensors header");
  const size_t base = 8 + header_len;
  const size_t body_size = data.size() - base;

  SafetensorsFile file;
  for (const auto& [name, value] : header.fields()) {
    const std::string what = "safetensors tensor " + name;
    if (name == "__metadata__") {
      for (const auto& [key, v] : value.struct_value().fields()) file.metadata[key] = v.string_value();
      continue;
    }
    const Struct& info = value.struct_value();
    if (Field(info, "dtype", what).string_value() != "F32") throw std::invalid_argument(what + ": only F32 is supported");
    SafetensorsTensor tensor;
    tensor.shape = IntList(Field(info, "shape", what), what + " shape");
    const std::vector<int64_t> offsets = IntList(Field(info, "data_offsets", what), what + " data_offsets");
    uint64_t count = 1;
    for (int64_t d : tensor.shape) {
      if (d != 0 && count > body_size / static_cast<uint64_t>(d)) throw std::invalid_argument(what + ": shape exceeds the file");
      count *= static_cast<uint64_t>(d);
    }
    if (offsets.size() != 2 || offsets[0] > offsets[1] || static_cast<uint64_t>(offsets[1]) > body_size ||
        static_cast<uint64_t>(offsets[1] - offsets[0]) != count * 4) {
      throw std::invalid_argument(what + ": data_offsets do not match its shape or lie outside the file");
    }
    tensor.values.resize(count);
    for (uint64_t i = 0; i < count; ++i) {  // little-endian float32, independent of the host order
      const size_t at = base + static_cast<size_t>(offsets[0]) + 4 * i;
      uint32_t bits = 0;
      for (int b = 0; b < 4; ++b) bits |= uint32_t(static_cast<unsigned char>(data[at + b])) << (8 * b);
      std::memcpy(&tensor.values[i], &bits, 4);
    }
    file.tensors.emplace(name, std::move(tensor));
  }
  return file;
}

MlpPolicy::Layer MlpPolicy::LoadLayer(const SafetensorsFile& file, const std::string& prefix) {
  auto w = file.tensors.find(prefix + ".weight");
  auto b = file.tensors.find(prefix + ".bias");
  if (w == file.tensors.end() || b == file.tensors.end() || w->second.shape.size() != 2 ||
      b->second.values.size() != static_cast<size_t>(w->second.shape[0])) {
    throw std::invalid_argument("policy: missing or malformed layer " + prefix);
  }
  Layer layer;
  layer.out = static_cast<int>(w->second.shape[0]);
  layer.in = static_cast<int>(w->second.shape[1]);
  layer.weight = w->second.values;
  layer.bias = b->second.values;
  return layer;
}

MlpPolicy MlpPolicy::FromSafetensors(const std::string& data) {
  const SafetensorsFile file = ParseSafetensors(data);
  auto arch_it = file.metadata.find("ludus.architecture");
  if (arch_it == file.metadata.end()) throw std::invalid_argument("policy: no ludus.architecture metadata");
  const Struct arch = ParseJson(arch_it->second, "ludus.architecture");
  const std::string format = Field(arch, "format", "ludus.architecture").string_value();
  if (format != "ludus.mlp_actor.v1") {
    throw std::invalid_argument("policy: architecture " + format + " is not supported by the C++ client (it reads ludus.mlp_actor.v1)");
  }
  for (const char* unsupported : {"visual_encoders", "entity_encoders", "goal_layer"}) {
    if (Has(arch, unsupported)) throw std::invalid_argument(std::string("policy: ") + unsupported + " is not supported by the C++ client");
  }
  if (Has(arch, "memory_size") && arch.fields().at("memory_size").number_value() > 0) {
    throw std::invalid_argument("policy: recurrent policies are not supported by the C++ client");
  }

  MlpPolicy p;
  p.version_ = std::stoll(file.metadata.count("ludus.version") ? file.metadata.at("ludus.version") : "0");
  p.activation_ = Field(arch, "activation", "ludus.architecture").string_value();
  if (p.activation_ != "swish" && p.activation_ != "tanh" && p.activation_ != "relu") {
    throw std::invalid_argument("policy: unknown activation " + p.activation_);
  }
  p.deterministic_ = Has(arch, "deterministic") && arch.fields().at("deterministic").bool_value();
  p.normalize_ = Field(arch, "normalize", "ludus.architecture").bool_value();
  p.normalize_clamp_ = Field(arch, "normalize_clamp", "ludus.architecture").number_value();
  p.normalize_epsilon_ = Field(arch, "normalize_epsilon", "ludus.architecture").number_value();
  for (int64_t size : IntList(Field(arch, "observation_sizes", "ludus.architecture"), "observation_sizes")) {
    p.observation_size_ += static_cast<int>(size);
  }
  if (p.normalize_) {
    p.norm_mean_ = Values(file, "normalizer.mean");
    p.norm_var_ = Values(file, "normalizer.var");
  }
  for (const Value& name : Field(arch, "body_layers", "ludus.architecture").list_value().values()) {
    p.body_.push_back(LoadLayer(file, name.string_value()));
  }
  p.continuous_size_ = static_cast<int>(Field(arch, "continuous_size", "ludus.architecture").number_value());
  if (p.continuous_size_ > 0) {
    p.mu_ = LoadLayer(file, "continuous.mu");
    p.log_std_ = Values(file, "continuous.log_std");
  }
  const auto branch_sizes = IntList(Field(arch, "discrete_branches", "ludus.architecture"), "discrete_branches");
  for (size_t i = 0; i < branch_sizes.size(); ++i) p.branches_.push_back(LoadLayer(file, "discrete." + std::to_string(i)));

  // Shapes must chain, so that Act() never reads outside a weight matrix of a malformed file.
  int width = p.observation_size_;
  const bool norm_ok = !p.normalize_ || (p.norm_mean_.size() == size_t(width) && p.norm_var_.size() == size_t(width));
  bool ok = norm_ok;
  for (const Layer& layer : p.body_) {
    ok = ok && layer.in == width;
    width = layer.out;
  }
  if (p.continuous_size_ > 0) {
    ok = ok && p.mu_.in == width && p.mu_.out == p.continuous_size_ && p.log_std_.size() == size_t(p.continuous_size_);
  }
  for (size_t i = 0; i < branch_sizes.size(); ++i) {
    ok = ok && p.branches_[i].in == width && p.branches_[i].out == branch_sizes[i] && branch_sizes[i] >= 1;
  }
  if (!ok) throw std::invalid_argument("policy: tensor shapes do not match ludus.architecture");
  return p;
}

std::vector<float> MlpPolicy::Hidden(const std::vector<float>& observation) const {
  if (static_cast<int>(observation.size()) != observation_size_) {
    throw std::invalid_argument("policy: observation has " + std::to_string(observation.size()) + " values, expected " +
                                std::to_string(observation_size_));
  }
  std::vector<float> x = observation;
  if (normalize_) {  // the running normaliser the service trains with, frozen in this snapshot
    for (size_t i = 0; i < x.size(); ++i) {
      const double z = (x[i] - norm_mean_[i]) / std::sqrt(norm_var_[i] + normalize_epsilon_);
      x[i] = static_cast<float>(std::clamp(z, -normalize_clamp_, normalize_clamp_));
    }
  }
  for (const Layer& layer : body_) {
    std::vector<float> y(layer.out);
    for (int o = 0; o < layer.out; ++o) {
      double sum = layer.bias[o];
      for (int i = 0; i < layer.in; ++i) sum += double(layer.weight[size_t(o) * layer.in + i]) * x[i];
      const float v = static_cast<float>(sum);
      y[o] = activation_ == "swish" ? Swish(v) : activation_ == "tanh" ? std::tanh(v) : std::max(v, 0.0f);
    }
    x.swap(y);
  }
  return x;
}

Action MlpPolicy::Act(const std::vector<float>& observation, std::mt19937& rng, std::optional<bool> deterministic) const {
  const bool mode = deterministic.value_or(deterministic_);
  const std::vector<float> h = Hidden(observation);
  auto linear = [&h](const Layer& layer) {
    std::vector<double> out(layer.out);
    for (int o = 0; o < layer.out; ++o) {
      out[o] = layer.bias[o];
      for (int i = 0; i < layer.in; ++i) out[o] += double(layer.weight[size_t(o) * layer.in + i]) * h[i];
    }
    return out;
  };
  Action action;
  if (continuous_size_ > 0) {
    const std::vector<double> mu = linear(mu_);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (int i = 0; i < continuous_size_; ++i) {
      const double std_dev = std::exp(log_std_[i]);
      const double a = mode ? mu[i] : mu[i] + std_dev * normal(rng);
      const double z = (a - mu[i]) / std_dev;
      action.continuous.push_back(static_cast<float>(a));
      action.continuous_log_probs.push_back(static_cast<float>(-0.5 * z * z - log_std_[i] - 0.5 * kLog2Pi));
    }
  }
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (const Layer& branch : branches_) {
    std::vector<double> logits = linear(branch);
    const double top = *std::max_element(logits.begin(), logits.end());
    double total = 0.0;
    for (double& l : logits) total += std::exp(l -= top);
    const double log_total = std::log(total);
    int choice = 0;
    if (mode) {
      choice = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {  // inverse-CDF sampling of the softmax
      double u = uniform(rng) * total;
      while (choice + 1 < static_cast<int>(logits.size()) && (u -= std::exp(logits[choice])) > 0) ++choice;
    }
    action.discrete.push_back(choice);
    action.discrete_log_probs.push_back(static_cast<float>(logits[choice] - log_total));
  }
  return action;
}

}  // namespace ludus
