// ludus_policy_probe POLICY.safetensors < observations
//
// Evaluates a policy file with ludus::MlpPolicy in deterministic mode, one observation per input
// line (whitespace-separated floats), and prints one JSON line per observation with the actions
// and their log-probabilities. The test suite compares this output with the Python SDK's
// LocalPolicy on the same file, so the C++ evaluator cannot silently drift from the service's
// networks (wrong log-probabilities would skew every PPO ratio computed from C++ trajectories).
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "ludus/policy.h"

namespace {
template <typename T>
std::string JsonList(const std::vector<T>& values) {
  std::ostringstream out;
  out << std::setprecision(9) << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? "," : "") << values[i];
  out << "]";
  return out.str();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: ludus_policy_probe POLICY.safetensors < observations" << std::endl;
    return 2;
  }
  try {
    std::ifstream file(argv[1], std::ios::binary);
    if (!file) throw std::runtime_error(std::string("cannot read ") + argv[1]);
    const std::string data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    const ludus::MlpPolicy policy = ludus::MlpPolicy::FromSafetensors(data);
    std::mt19937 rng(0);  // unused in deterministic mode
    std::string line;
    while (std::getline(std::cin, line)) {
      std::istringstream fields(line);
      const std::vector<float> observation((std::istream_iterator<float>(fields)), std::istream_iterator<float>());
      const ludus::Action a = policy.Act(observation, rng, true);
      std::cout << "{\"continuous\":" << JsonList(a.continuous) << ",\"continuous_log_probs\":"
                << JsonList(a.continuous_log_probs) << ",\"discrete\":" << JsonList(a.discrete)
                << ",\"discrete_log_probs\":" << JsonList(a.discrete_log_probs) << "}" << std::endl;
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ludus_policy_probe: error: " << e.what() << std::endl;
    return 1;
  }
}
