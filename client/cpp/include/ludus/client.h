// A thin C++ wrapper over the generated ludus.v1.Trainer stub (synchronous gRPC API).
//
// - Every unary call and GetPolicy has a deadline (ClientOptions::timeout); streams that run
//   indefinitely (WatchPolicy, SubmitTrajectories) have none unless given one, and are ended by
//   the caller (PolicyWatch::Cancel, TrajectoryStream::Close).
// - Calls wait for the channel to connect (wait_for_ready), so a server that starts a little later
//   is not an error.
// - Failures throw LudusError carrying the gRPC status code and the server's message, which names
//   the offending field (e.g. "requests[0].trajectory.rewards: ...").
// - Message limits are raised to the server's (256 MiB) so large observations pass.
// - Surviving a server restart (e.g. `ludus-server --resume` after a crash): the idempotent unary
//   calls (RegisterBehavior, DescribeBehavior, GetPolicy) are retried on UNAVAILABLE, as the Python
//   SDK does; ReliableTrajectoryStream and ReliablePolicyWatch reopen their streams and carry on.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include <grpcpp/grpcpp.h>

#include "ludus/v1/trainer.grpc.pb.h"

namespace ludus {

class LudusError : public std::runtime_error {
 public:
  LudusError(grpc::StatusCode code, const std::string& details);
  explicit LudusError(const grpc::Status& status) : LudusError(status.error_code(), status.error_message()) {}
  grpc::StatusCode code() const { return code_; }
  const std::string& details() const { return details_; }  // the message without the code's name

 private:
  grpc::StatusCode code_;
  std::string details_;
};

// Failures worth retrying: UNAVAILABLE (server restarting or unreachable), RESOURCE_EXHAUSTED (the
// behaviour's intake is full: back-pressure) and DEADLINE_EXCEEDED. Anything else is permanent.
bool IsTransient(grpc::StatusCode code);

// How everything that retries backs off: waits start at initial_backoff and double up to
// max_backoff; once give_up_after has passed since the first failure of a run of failures (no
// success in between), the last error is thrown. give_up_after 0 = no retries.
struct RetryOptions {
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{10000};
  std::chrono::milliseconds give_up_after{300000};
};

// One run of consecutive failures, timed by RetryOptions.
class Backoff {
 public:
  explicit Backoff(const RetryOptions& options) : options_(options) {}
  // After a failure: how long to wait before the next attempt. Throws `error` itself if it is not
  // transient (IsTransient), and LudusError(its code, "gave up after ...") once the run has lasted
  // give_up_after; either way the next failure starts a new run.
  std::chrono::milliseconds Next(const LudusError& error);
  // After a success.
  void Reset() { failing_since_.reset(); }
  // `wait`, shortened to the time left before a run under way gives up (so a wait for the server
  // does not outlast give_up_after).
  std::chrono::milliseconds CapToGiveUp(std::chrono::milliseconds wait) const;

 private:
  RetryOptions options_;
  std::chrono::milliseconds next_{0};
  std::optional<std::chrono::steady_clock::time_point> failing_since_;
};

struct ClientOptions {
  std::chrono::milliseconds timeout{30000};
  int max_message_bytes = 256 * 1024 * 1024;
  // Sent as `authorization: Bearer <token>` on every call when non-empty (servers started with
  // an auth token require it). Plaintext channel only: TLS is not wired in yet.
  std::string token;
  // Backoff of the retried unary calls and the default of the Reliable* streams. max_backoff also
  // caps the channel's own reconnection backoff (gRPC's default grows to 120 s), so a restarted
  // server is found again within seconds.
  RetryOptions retry;
};

// A complete serialised policy version (safetensors bytes), size and SHA-256 already verified.
struct PolicyBlob {
  std::string behavior_name;
  int64_t version = 0;
  std::string data;
  std::string sha256;
  int64_t trained_steps = 0;
};

// Reassembles PolicyChunk streams into whole policies: checks offsets, total size and SHA-256 and
// throws LudusError(DATA_LOSS) on any mismatch.
class ChunkAssembler {
 public:
  // Returns true and fills *out when `chunk` completes a policy.
  bool Add(const v1::PolicyChunk& chunk, PolicyBlob* out);

 private:
  std::string data_;
};

// One open SubmitTrajectories stream. The service answers each trajectory with one
// acknowledgement, in order. Submit() sends one and waits for its answer; Send()/ReadAck() let a
// caller keep several in flight. Not thread-safe: one stream per simulator thread.
class TrajectoryStream {
 public:
  // wait_for_ready false: fail at once (UNAVAILABLE) rather than wait when the channel is not connected.
  TrajectoryStream(v1::Trainer::Stub* stub, const ClientOptions& options, bool wait_for_ready = true);
  ~TrajectoryStream();  // cancels the stream if Close() was not called
  TrajectoryStream(const TrajectoryStream&) = delete;
  TrajectoryStream& operator=(const TrajectoryStream&) = delete;

  v1::SubmitTrajectoriesResponse Submit(const std::string& behavior_name, const v1::Trajectory& trajectory);
  void Send(const std::string& behavior_name, const v1::Trajectory& trajectory);
  v1::SubmitTrajectoriesResponse ReadAck();
  // Half-closes the stream and checks its final status.
  void Close();

 private:
  [[noreturn]] void Fail(const char* what);
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SubmitTrajectoriesRequest, v1::SubmitTrajectoriesResponse>> stream_;
  bool closed_ = false;
};

// A WatchPolicy stream: Next() blocks until the next new version has arrived completely.
class PolicyWatch {
 public:
  PolicyWatch(v1::Trainer::Stub* stub, const ClientOptions& options, const v1::WatchPolicyRequest& request,
              std::chrono::milliseconds deadline, bool wait_for_ready = true);
  ~PolicyWatch();
  PolicyWatch(const PolicyWatch&) = delete;
  PolicyWatch& operator=(const PolicyWatch&) = delete;

  // False once the stream has ended because of Cancel(); throws LudusError for any other end
  // (including DEADLINE_EXCEEDED when a deadline was given).
  bool Next(PolicyBlob* out);
  // Ends the stream; safe to call from another thread while Next() blocks.
  void Cancel() { context_.TryCancel(); }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::PolicyChunk>> reader_;
  ChunkAssembler assembler_;
  bool finished_ = false;
};

class Client {
 public:
  explicit Client(const std::string& target, ClientOptions options = {});

  // Blocks until the channel connects; false if it did not within `timeout`.
  bool WaitReady(std::chrono::milliseconds timeout);

  // RegisterBehavior, DescribeBehavior and GetPolicy are idempotent: retried on UNAVAILABLE with
  // options.retry's backoff (a call made while the server is down waits for it, up to options.timeout).
  // `settings_json`: ML-Agents trainer settings as JSON (e.g. {"hyperparameters": {"batch_size": 32}}),
  // sent as the request's google.protobuf.Struct; empty = the server's configuration.
  v1::RegisterBehaviorResponse RegisterBehavior(const std::string& behavior_name, const v1::BehaviorSpec& spec,
                                                const std::string& settings_json = "");
  v1::DescribeBehaviorResponse DescribeBehavior(const std::string& behavior_name);
  // Version 0 = the latest. Concatenates the chunks and verifies size and SHA-256.
  PolicyBlob GetPolicy(const std::string& behavior_name, int64_t version = 0);
  std::unique_ptr<TrajectoryStream> OpenTrajectoryStream();
  // Versions newer than `after_version` (0 = start with the current one). `deadline` 0 = none.
  std::unique_ptr<PolicyWatch> WatchPolicy(const std::string& behavior_name, int64_t after_version,
                                           std::chrono::milliseconds deadline = std::chrono::milliseconds(0));

  v1::Trainer::Stub* stub() { return stub_.get(); }  // for RPCs this wrapper does not cover
  grpc::Channel* channel() { return channel_.get(); }
  const ClientOptions& options() const { return options_; }

 private:
  std::string target_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Trainer::Stub> stub_;
};

// SubmitTrajectories that survives the server restarting (e.g. SIGKILL, then `ludus-server --resume`
// on the same port) or pushing back, like the Python SDK's TrajectoryStream: Submit() sends one
// trajectory and returns its acknowledgement. The trajectory stays pending until acknowledged: when
// the stream breaks with a transient status (IsTransient), it is reopened after an exponential
// backoff (each attempt waits for a connection, up to ClientOptions::timeout and not past the give-up
// time) and the trajectory is sent again, until it is acknowledged or retry.give_up_after has passed
// without success; then the last error is thrown ("gave up after ..."). Permanent errors
// (INVALID_ARGUMENT for a bad trajectory, NOT_FOUND for a behaviour that a server restarted without
// --resume does not know) are thrown at once; the next Submit() opens a new stream. A trajectory
// whose acknowledgement was lost in transit is sent again, so it may arrive twice (at least once, as
// in the Python SDK). One trajectory in flight at a time (TrajectoryStream's Send/ReadAck pipeline,
// without resending); not thread-safe: one per simulator thread.
class ReliableTrajectoryStream {
 public:
  ReliableTrajectoryStream(Client* client, std::string behavior_name);  // retry = client->options().retry
  ReliableTrajectoryStream(Client* client, std::string behavior_name, const RetryOptions& retry);
  ReliableTrajectoryStream(const ReliableTrajectoryStream&) = delete;
  ReliableTrajectoryStream& operator=(const ReliableTrajectoryStream&) = delete;

  v1::SubmitTrajectoriesResponse Submit(const v1::Trajectory& trajectory);
  // Half-closes the stream. Every Submit() was acknowledged, so a transient error here loses
  // nothing and is ignored; others are thrown.
  void Close();
  // How often the stream was reopened after a transient failure.
  int64_t reconnects() const { return reconnects_; }

 private:
  Client* client_;
  std::string behavior_name_;
  Backoff backoff_;
  std::unique_ptr<TrajectoryStream> stream_;  // null until the first Submit and after a failure
  int64_t reconnects_ = 0;
};

// WatchPolicy that survives the server restarting: Next() blocks until the next version has arrived
// completely; when the stream breaks with a transient status (or ends without Cancel()), it is
// reopened after an exponential backoff. A reopened watch starts with the server's current policy,
// delivered unless it is the one delivered last (same version and SHA-256): a server resumed from
// an older checkpoint goes back to that checkpoint's version, and the caller sees that policy
// (versions can then repeat, with other weights). Cancel() ends it from any thread.
class ReliablePolicyWatch {
 public:
  // after_version as in Client::WatchPolicy (0 = start with the current version).
  ReliablePolicyWatch(Client* client, std::string behavior_name, int64_t after_version);
  ReliablePolicyWatch(Client* client, std::string behavior_name, int64_t after_version, const RetryOptions& retry);
  ReliablePolicyWatch(const ReliablePolicyWatch&) = delete;
  ReliablePolicyWatch& operator=(const ReliablePolicyWatch&) = delete;

  // False once Cancel() was called; throws LudusError for a permanent error or after give_up_after.
  bool Next(PolicyBlob* out);
  void Cancel();
  int64_t reconnects() const { return reconnects_.load(); }

 private:
  bool Open();      // false if cancelled meanwhile
  bool Cancelled();

  Client* client_;
  std::string behavior_name_;
  int64_t last_version_;        // delivered last (initially after_version)
  std::string last_sha256_;     // empty until a policy was delivered
  bool reopening_ = false;      // after the first stream: ask for the current version (after_version 0)
  Backoff backoff_;
  std::atomic<int64_t> reconnects_{0};
  std::mutex mutex_;            // guards cancelled_ and watch_ (Cancel() runs on another thread)
  std::condition_variable cancel_signal_;
  bool cancelled_ = false;
  std::unique_ptr<PolicyWatch> watch_;
};

// Applies the options every call of this client uses (metadata, wait_for_ready, deadline if > 0).
void PrepareContext(grpc::ClientContext* context, const ClientOptions& options, std::chrono::milliseconds deadline);

}  // namespace ludus
