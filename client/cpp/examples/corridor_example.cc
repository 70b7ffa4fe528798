// ludus_cpp_example: the whole Ludus loop from C++ against a live service.
//
//   ludus_cpp_example --target host:port [--steps N] [--behavior NAME] [--wait-s S] [--seed K] [--no-sync]
//                     [--give-up-s S]
//
// 1. registers a behaviour for a tiny 1-D corridor simulator (below), with a small buffer so the
//    service trains after a few hundred steps;
// 2. fetches the initial policy (GetPolicy) and acts with it in C++ (ludus::MlpPolicy);
// 3. streams trajectories on one SubmitTrajectories stream, one acknowledgement per trajectory;
// 4. follows WatchPolicy on a second thread and swaps in each new version between trajectories
//    (by default waiting for it once buffer_size steps of the current version were accepted);
// 5. waits until a version newer than the initial one has arrived, fetches that version again with
//    GetPolicy and checks size and SHA-256 against what WatchPolicy delivered;
// 6. prints one JSON summary line and exits 0 (or prints "error: ..." to stderr and exits 1).
//
// It survives the trainer restarting (e.g. SIGKILL, then `ludus-server --resume` on the same port):
// trajectories go through ludus::ReliableTrajectoryStream and versions through
// ludus::ReliablePolicyWatch, which reopen their streams; a server resumed from an older checkpoint
// is followed back to that checkpoint's policy, and steps it lost are collected again. It gives up
// (exit 1, "gave up after ...") when the server stays away for --give-up-s seconds (default 300).
//
// The bearer token, if the server requires one, is read from LUDUS_AUTH_TOKEN like the Python SDK.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ludus/client.h"
#include "ludus/policy.h"
#include "ludus/tensor.h"

namespace {

constexpr int kLength = 8;          // cells 0..7; the goal is the last one
constexpr int kMaxEpisodeSteps = 30;  // then the episode is cut (interrupted, bootstrapped)
constexpr int kObsSize = 2;
constexpr int kTimeHorizon = 16;    // trajectory pieces are cut at this length, as in the settings
constexpr int64_t kBufferSize = 128;  // hyperparameters.buffer_size below: steps per update

// Settings in ML-Agents' schema: a small buffer and network so an update happens within seconds.
const char* kSettings = R"({"hyperparameters": {"batch_size": 32, "buffer_size": 128, "num_epoch": 1},
  "network_settings": {"hidden_units": 32, "num_layers": 1}, "time_horizon": 16})";

// The simulator: walk left (action 0) or right (action 1); +1 at the goal, -0.01 per step.
class Corridor {
 public:
  explicit Corridor(std::mt19937& rng) : rng_(rng) { Reset(); }
  void Reset() {
    position_ = std::uniform_int_distribution<int>(0, 3)(rng_);
    steps_ = 0;
  }
  std::vector<float> Observation() const {
    const float x = static_cast<float>(position_) / (kLength - 1);
    return {x, 1.0f - x};
  }
  // Returns the reward; sets *done at the goal and *interrupted at the step limit.
  float Step(int action, bool* done, bool* interrupted) {
    position_ = std::max(0, std::min(kLength - 1, position_ + (action == 1 ? 1 : -1)));
    ++steps_;
    *done = position_ == kLength - 1;
    *interrupted = !*done && steps_ >= kMaxEpisodeSteps;
    return *done ? 1.0f : -0.01f;
  }

 private:
  std::mt19937& rng_;
  int position_ = 0;
  int steps_ = 0;
};

// Steps of the current trajectory piece, time-major.
struct Piece {
  std::vector<float> observations, log_probs, rewards;
  std::vector<int32_t> actions;
  int64_t length() const { return static_cast<int64_t>(rewards.size()); }
};

ludus::v1::Trajectory BuildTrajectory(const Piece& piece, int64_t version, bool done, bool interrupted,
                                      const std::vector<float>& next_observation) {
  const int64_t t = piece.length();
  ludus::v1::Trajectory trajectory;
  trajectory.set_agent_id("cpp-agent-0");
  trajectory.set_policy_version(version);
  *trajectory.add_observations() = ludus::Float32Tensor(piece.observations, {t, kObsSize});
  *trajectory.mutable_discrete_actions() = ludus::Int32Tensor(piece.actions, {t, 1});
  *trajectory.mutable_discrete_log_probs() = ludus::Float32Tensor(piece.log_probs, {t, 1});
  *trajectory.mutable_rewards() = ludus::Float32Tensor(piece.rewards, {t});
  trajectory.set_done(done);
  trajectory.set_interrupted(interrupted);
  if (!done) *trajectory.add_next_observations() = ludus::Float32Tensor(next_observation, {kObsSize});
  return trajectory;
}

// What the WatchPolicy thread hands to the acting thread.
struct WatchState {
  std::mutex mutex;
  std::condition_variable changed;
  std::optional<ludus::PolicyBlob> newest;  // the latest version delivered, not yet acted with
  std::optional<ludus::PolicyBlob> last;    // the latest version delivered (kept for the summary)
  std::vector<int64_t> versions;
  int64_t bytes = 0;
  std::string error;
  bool ended = false;
};

void FollowPolicies(ludus::ReliablePolicyWatch* watch, WatchState* state) {
  try {
    ludus::PolicyBlob blob;
    while (watch->Next(&blob)) {  // size and SHA-256 are verified inside Next(); reconnects inside too
      std::lock_guard<std::mutex> lock(state->mutex);
      state->versions.push_back(blob.version);
      state->bytes += static_cast<int64_t>(blob.data.size());
      state->newest = blob;
      state->last = blob;
      state->changed.notify_all();
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lock(state->mutex);
    state->error = e.what();
  }
  std::lock_guard<std::mutex> lock(state->mutex);
  state->ended = true;
  state->changed.notify_all();
}

std::string JsonList(const std::vector<int64_t>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? "," : "") << values[i];
  out << "]";
  return out.str();
}

struct Args {
  std::string target;
  std::string behavior = "CppCorridor";
  int64_t steps = 512;
  int wait_s = 120;
  unsigned seed = 1;
  bool sync = true;  // --no-sync: act freely, swapping in new versions whenever they arrive
  int give_up_s = 300;  // how long the streams retry while the server is away
};

Args ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--no-sync") {
      args.sync = false;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + flag);
    const std::string value = argv[++i];
    if (flag == "--target") args.target = value;
    else if (flag == "--behavior") args.behavior = value;
    else if (flag == "--steps") args.steps = std::stoll(value);
    else if (flag == "--wait-s") args.wait_s = std::stoi(value);
    else if (flag == "--seed") args.seed = static_cast<unsigned>(std::stoul(value));
    else if (flag == "--give-up-s") args.give_up_s = std::stoi(value);
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (args.target.empty()) throw std::invalid_argument("--target host:port is required");
  if (args.steps < 1) throw std::invalid_argument("--steps must be >= 1");
  if (args.give_up_s < 0) throw std::invalid_argument("--give-up-s must be >= 0");
  return args;
}

int Run(const Args& args) {
  ludus::ClientOptions options;
  if (const char* token = std::getenv("LUDUS_AUTH_TOKEN")) options.token = token;
  options.retry.give_up_after = std::chrono::seconds(args.give_up_s);  // backoff: 0.2 s doubling to 10 s
  ludus::Client client(args.target, options);
  if (!client.WaitReady(std::chrono::seconds(30))) throw std::runtime_error("no Ludus server at " + args.target + " after 30 s");

  ludus::v1::BehaviorSpec spec;
  auto* observation = spec.add_observations();
  observation->set_name("position");
  observation->add_shape(kObsSize);
  observation->set_kind(ludus::v1::OBSERVATION_KIND_VECTOR);
  spec.mutable_actions()->add_discrete_branches(2);
  const auto registration = client.RegisterBehavior(args.behavior, spec, kSettings);
  const int64_t initial_version = registration.policy_version();

  ludus::PolicyBlob initial = client.GetPolicy(args.behavior, initial_version);
  int64_t bytes_fetched = static_cast<int64_t>(initial.data.size());
  ludus::MlpPolicy policy = ludus::MlpPolicy::FromSafetensors(initial.data);
  std::string policy_sha256 = initial.sha256;
  std::vector<int64_t> acted_with = {policy.version()};

  // Follow new versions from the start, so none published while we act is missed.
  WatchState watch_state;
  ludus::ReliablePolicyWatch watch(&client, args.behavior, initial_version);
  std::thread watcher(FollowPolicies, &watch, &watch_state);
  struct JoinOnExit {  // every exit path (exceptions included) stops and joins the watcher
    ludus::ReliablePolicyWatch* watch;
    std::thread* thread;
    ~JoinOnExit() { watch->Cancel(); if (thread->joinable()) thread->join(); }
  } join_on_exit{&watch, &watcher};

  std::mt19937 rng(args.seed);
  Corridor sim(rng);
  ludus::ReliableTrajectoryStream stream(&client, args.behavior);
  Piece piece;
  std::vector<float> obs = sim.Observation();
  int64_t submitted = 0, accepted = 0, dropped = 0, trajectories = 0, episodes = 0, server_total = 0;
  int64_t accepted_this_version = 0, rollbacks = 0, recollections = 0;
  bool more_steps = true;  // false while submitting the last trajectory: nothing left to wait for

  // After a server restart from a checkpoint, version numbers can repeat with other weights: a
  // policy is "another one" if its version or its SHA-256 differs.
  auto differs = [&](const ludus::PolicyBlob& blob) { return blob.version != policy.version() || blob.sha256 != policy_sha256; };
  auto act_with = [&](const ludus::PolicyBlob& blob) {
    if (blob.version <= policy.version()) ++rollbacks;  // the server went back to an older checkpoint
    policy = ludus::MlpPolicy::FromSafetensors(blob.data);
    policy_sha256 = blob.sha256;
    acted_with.push_back(policy.version());
    accepted_this_version = 0;
  };
  // The newest policy WatchPolicy delivered, if it is another one than ours. Call with the lock held.
  auto take_newest = [&]() {
    std::optional<ludus::PolicyBlob> newest;
    newest.swap(watch_state.newest);
    if (newest && !differs(*newest)) newest.reset();
    return newest;
  };
  // Sync mode: wait for the version trained on this version's buffer_size steps. After a server
  // restart the wait can end otherwise: the resumed server is at another version (the watch
  // delivers it), or it lost steps it had acknowledged and needs more before it trains (nullopt:
  // collect again), which DescribeBehavior tells (only asked once a reconnect was seen).
  auto await_next_version = [&]() -> std::optional<ludus::PolicyBlob> {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(args.wait_s);
    while (std::chrono::steady_clock::now() < deadline) {
      {
        std::unique_lock<std::mutex> lock(watch_state.mutex);
        watch_state.changed.wait_for(lock, std::chrono::seconds(1), [&] {
          return watch_state.ended || (watch_state.newest && differs(*watch_state.newest));
        });
        if (auto newest = take_newest()) return newest;
        if (watch_state.ended) break;
      }
      if (stream.reconnects() + watch.reconnects() == 0) continue;
      try {
        const auto state = client.DescribeBehavior(args.behavior);
        if (state.policy_version() == policy.version() && state.buffered_steps() + state.queued_steps() < kBufferSize) {
          ++recollections;
          return std::nullopt;
        }
      } catch (const ludus::LudusError& e) {
        if (!ludus::IsTransient(e.code())) throw;  // the server is still coming back: keep waiting
      }
    }
    std::lock_guard<std::mutex> lock(watch_state.mutex);
    throw std::runtime_error("no policy version after " + std::to_string(policy.version()) + " within " +
                             std::to_string(args.wait_s) + " s" +
                             (watch_state.error.empty() ? "" : ": WatchPolicy failed: " + watch_state.error));
  };

  auto submit = [&](bool done, bool interrupted, const std::vector<float>& next_obs) {
    // Returns once acknowledged, reconnecting and resending while the server restarts.
    const auto ack = stream.Submit(BuildTrajectory(piece, policy.version(), done, interrupted, next_obs));
    submitted += piece.length();
    accepted += ack.accepted_steps();
    dropped += ack.dropped_steps();
    server_total = ack.total_steps();
    ++trajectories;
    piece = Piece();
    accepted_this_version += ack.accepted_steps();
    if (ack.drop_reason() == ludus::v1::DROP_REASON_UNKNOWN_POLICY_VERSION) {
      // The server resumed from a checkpoint older than our policy: act with its current one.
      act_with(client.GetPolicy(args.behavior));
      return;
    }
    // Between trajectories, act with the newest version WatchPolicy has delivered. In sync mode,
    // once this version's data filled buffer_size (the service then trains on it), wait for the
    // next version first, so every step is collected on-policy, as ludus-gym does by default.
    std::optional<ludus::PolicyBlob> newest;
    {
      std::lock_guard<std::mutex> lock(watch_state.mutex);
      newest = take_newest();
    }
    if (!newest && args.sync && accepted_this_version >= kBufferSize && more_steps) {
      newest = await_next_version();
      if (!newest) accepted_this_version = 0;  // the server needs more steps of this version
    }
    if (newest) act_with(*newest);
  };

  for (int64_t step = 0; step < args.steps; ++step) {
    const ludus::Action action = policy.Act(obs, rng);
    bool done = false, interrupted = false;
    const float reward = sim.Step(action.discrete[0], &done, &interrupted);
    piece.observations.insert(piece.observations.end(), obs.begin(), obs.end());
    piece.actions.push_back(action.discrete[0]);
    piece.log_probs.push_back(action.discrete_log_probs[0]);
    piece.rewards.push_back(reward);
    obs = sim.Observation();  // the observation after this step: the next one, or the bootstrap one
    more_steps = step + 1 < args.steps;
    if (done || interrupted || piece.length() == kTimeHorizon) submit(done, interrupted, obs);
    if (done || interrupted) {
      ++episodes;
      sim.Reset();
      obs = sim.Observation();
    }
  }
  more_steps = false;
  if (piece.length() > 0) submit(false, false, obs);  // the unfinished rest, bootstrapped from obs
  stream.Close();

  // Wait for a version newer than the initial one (training runs asynchronously in the service).
  ludus::PolicyBlob watched;
  std::vector<int64_t> watched_versions;
  {
    std::unique_lock<std::mutex> lock(watch_state.mutex);
    const bool arrived = watch_state.changed.wait_for(lock, std::chrono::seconds(args.wait_s), [&] {
      return watch_state.ended || (watch_state.last && watch_state.last->version > initial_version);
    });
    if (!watch_state.error.empty()) throw std::runtime_error("WatchPolicy failed: " + watch_state.error);
    if (!arrived || !watch_state.last || watch_state.last->version <= initial_version) {
      throw std::runtime_error("no policy version newer than " + std::to_string(initial_version) +
                               " arrived via WatchPolicy within " + std::to_string(args.wait_s) + " s (" +
                               std::to_string(accepted) + " steps accepted)");
    }
    watched = *watch_state.last;
    watched_versions = watch_state.versions;
    bytes_fetched += watch_state.bytes;
  }

  // Fetch the same version explicitly and compare with what the watch delivered.
  const ludus::PolicyBlob fetched = client.GetPolicy(args.behavior, watched.version);
  bytes_fetched += static_cast<int64_t>(fetched.data.size());
  const bool sha_ok = ludus::Sha256Hex(fetched.data) == fetched.sha256 && fetched.sha256 == watched.sha256 &&
                      fetched.data == watched.data;
  if (!sha_ok) throw std::runtime_error("GetPolicy(" + std::to_string(watched.version) + ") differs from the watched copy");
  const ludus::MlpPolicy fetched_policy = ludus::MlpPolicy::FromSafetensors(fetched.data);
  if (fetched_policy.version() != fetched.version) throw std::runtime_error("policy file's ludus.version differs from the chunk's version");

  std::cout << "{\"behavior\":\"" << args.behavior << "\",\"initial_version\":" << initial_version
            << ",\"watched_versions\":" << JsonList(watched_versions) << ",\"acted_with_versions\":" << JsonList(acted_with)
            << ",\"fetched_version\":" << fetched.version << ",\"fetched_size\":" << fetched.data.size()
            << ",\"fetched_sha256\":\"" << fetched.sha256 << "\",\"sha256_ok\":" << (sha_ok ? "true" : "false")
            << ",\"bytes_fetched\":" << bytes_fetched << ",\"steps_submitted\":" << submitted
            << ",\"steps_accepted\":" << accepted << ",\"steps_dropped\":" << dropped
            << ",\"trajectories\":" << trajectories << ",\"episodes\":" << episodes
            << ",\"server_total_steps\":" << server_total << ",\"reconnects\":" << stream.reconnects()
            << ",\"watch_reconnects\":" << watch.reconnects() << ",\"policy_rollbacks\":" << rollbacks
            << ",\"recollections\":" << recollections << "}" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = ParseArgs(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "ludus_cpp_example: " << e.what() << "\nusage: ludus_cpp_example --target host:port [--steps N] "
              << "[--behavior NAME] [--wait-s S] [--seed K] [--no-sync] [--give-up-s S]" << std::endl;
    return 2;
  }
  try {
    return Run(args);
  } catch (const std::exception& e) {
    std::cerr << "ludus_cpp_example: error: " << e.what() << std::endl;
    return 1;
  }
}
