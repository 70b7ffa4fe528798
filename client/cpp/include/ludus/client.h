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
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
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

 private:
  grpc::StatusCode code_;
};

struct ClientOptions {
  std::chrono::milliseconds timeout{30000};
  int max_message_bytes = 256 * 1024 * 1024;
  // Sent as `authorization: Bearer <token>` on every call when non-empty (servers started with
  // an auth token require it). Plaintext channel only: TLS is not wired in yet.
  std::string token;
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
  TrajectoryStream(v1::Trainer::Stub* stub, const ClientOptions& options);
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
              std::chrono::milliseconds deadline);
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

 private:
  std::string target_;
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Trainer::Stub> stub_;
};

// Applies the options every call of this client uses (metadata, wait_for_ready, deadline if > 0).
void PrepareContext(grpc::ClientContext* context, const ClientOptions& options, std::chrono::milliseconds deadline);

}  // namespace ludus
