#include "ludus/client.h"

#include <algorithm>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "ludus/tensor.h"

namespace ludus {

namespace {
// gRPC's C++ API has no public name table; these are the codes of grpc/status.h, in order.
std::string CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                       "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                       "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? kNames[index] : "CODE_" + std::to_string(index);
}

// Runs an idempotent call, retrying it on UNAVAILABLE (the server went away mid-call or is shutting
// down; with wait_for_ready, a server that is merely down makes the call wait, up to its deadline).
template <typename Call>
auto RetryUnavailable(const RetryOptions& retry, Call call) -> decltype(call()) {
  Backoff backoff(retry);
  for (;;) {
    try {
      return call();
    } catch (const LudusError& error) {
      if (error.code() != grpc::StatusCode::UNAVAILABLE) throw;
      std::this_thread::sleep_for(backoff.Next(error));
    }
  }
}

// Waits until the channel is connected: at most `timeout`, and only while `keep_waiting()` holds
// (checked every 100 ms). False if it did not connect.
template <typename Predicate>
bool WaitConnected(grpc::Channel* channel, std::chrono::milliseconds timeout, Predicate keep_waiting) {
  const auto give_up = std::chrono::system_clock::now() + timeout;
  while (keep_waiting()) {
    const auto slice = std::min(give_up, std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    if (channel->WaitForConnected(slice)) return true;
    if (std::chrono::system_clock::now() >= give_up) return false;
  }
  return false;
}

std::string Seconds(std::chrono::milliseconds duration) {  // "2.8 s", "300 s"
  const int64_t tenths = (duration.count() + 50) / 100;
  return std::to_string(tenths / 10) + (tenths % 10 ? "." + std::to_string(tenths % 10) : "") + " s";
}
}  // namespace

LudusError::LudusError(grpc::StatusCode code, const std::string& details)
    : std::runtime_error(CodeName(code) + ": " + details), code_(code), details_(details) {}

bool IsTransient(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::chrono::milliseconds Backoff::Next(const LudusError& error) {
  const auto now = std::chrono::steady_clock::now();
  if (!failing_since_) {
    failing_since_ = now;
    next_ = options_.initial_backoff;
  }
  if (!IsTransient(error.code()) || options_.give_up_after.count() <= 0) {
    failing_since_.reset();
    throw error;
  }
  const auto failing_for = std::chrono::duration_cast<std::chrono::milliseconds>(now - *failing_since_);
  if (failing_for >= options_.give_up_after) {
    failing_since_.reset();
    throw LudusError(error.code(), "gave up after " + Seconds(failing_for) + " of failures: " + error.details());
  }
  const auto wait = std::min(next_, options_.give_up_after - failing_for);  // wake up in time to give up
  next_ = std::min(next_ * 2, options_.max_backoff);
  return wait;
}

std::chrono::milliseconds Backoff::CapToGiveUp(std::chrono::milliseconds wait) const {
  if (!failing_since_) return wait;
  const auto failing_for = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - *failing_since_);
  return std::max(std::chrono::milliseconds(0), std::min(wait, options_.give_up_after - failing_for));
}

void PrepareContext(grpc::ClientContext* context, const ClientOptions& options, std::chrono::milliseconds deadline) {
  if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
  context->set_wait_for_ready(true);
  if (deadline.count() > 0) context->set_deadline(std::chrono::system_clock::now() + deadline);
}

// --- ChunkAssembler ------------------------------------------------------------------------------

bool ChunkAssembler::Add(const v1::PolicyChunk& chunk, PolicyBlob* out) {
  const std::string where = "policy " + std::to_string(chunk.version()) + ": ";
  if (chunk.offset() != static_cast<int64_t>(data_.size())) {
    throw LudusError(grpc::StatusCode::DATA_LOSS, where + "chunk at offset " + std::to_string(chunk.offset()) +
                                                      ", expected " + std::to_string(data_.size()));
  }
  data_ += chunk.data();
  if (!chunk.last()) return false;
  // A versions_only announcement carries no data at all; anything else must match exactly.
  const bool announcement = data_.empty() && chunk.total_size() > 0;
  if (!announcement && (static_cast<int64_t>(data_.size()) != chunk.total_size() || Sha256Hex(data_) != chunk.sha256())) {
    throw LudusError(grpc::StatusCode::DATA_LOSS, where + "size or sha256 mismatch");
  }
  out->behavior_name = chunk.behavior_name();
  out->version = chunk.version();
  out->data.swap(data_);
  out->sha256 = chunk.sha256();
  out->trained_steps = chunk.trained_steps();
  data_.clear();
  return true;
}

// --- TrajectoryStream ----------------------------------------------------------------------------

TrajectoryStream::TrajectoryStream(v1::Trainer::Stub* stub, const ClientOptions& options, bool wait_for_ready) {
  PrepareContext(&context_, options, std::chrono::milliseconds(0));  // lives as long as the simulator
  context_.set_wait_for_ready(wait_for_ready);
  stream_ = stub->SubmitTrajectories(&context_);
}

TrajectoryStream::~TrajectoryStream() {
  if (!closed_) {
    context_.TryCancel();
    stream_->Finish();  // required before the context goes away; the status is CANCELLED
  }
}

void TrajectoryStream::Fail(const char* what) {
  // The server ended the stream (e.g. INVALID_ARGUMENT for a bad trajectory): its status says why.
  closed_ = true;
  const grpc::Status status = stream_->Finish();
  if (!status.ok()) throw LudusError(status);
  throw LudusError(grpc::StatusCode::INTERNAL, std::string("SubmitTrajectories: ") + what);
}

void TrajectoryStream::Send(const std::string& behavior_name, const v1::Trajectory& trajectory) {
  if (closed_) throw LudusError(grpc::StatusCode::FAILED_PRECONDITION, "SubmitTrajectories: stream is closed");
  v1::SubmitTrajectoriesRequest request;
  request.set_behavior_name(behavior_name);
  *request.mutable_trajectory() = trajectory;
  if (!stream_->Write(request)) Fail("stream closed while writing");
}

v1::SubmitTrajectoriesResponse TrajectoryStream::ReadAck() {
  if (closed_) throw LudusError(grpc::StatusCode::FAILED_PRECONDITION, "SubmitTrajectories: stream is closed");
  v1::SubmitTrajectoriesResponse ack;
  if (!stream_->Read(&ack)) Fail("stream ended before the acknowledgement");
  return ack;
}

v1::SubmitTrajectoriesResponse TrajectoryStream::Submit(const std::string& behavior_name, const v1::Trajectory& trajectory) {
  Send(behavior_name, trajectory);
  return ReadAck();
}

void TrajectoryStream::Close() {
  if (closed_) return;
  closed_ = true;
  stream_->WritesDone();
  v1::SubmitTrajectoriesResponse extra;
  while (stream_->Read(&extra)) {
    // Acknowledgements of Send()s never read: the caller chose not to look at them.
  }
  const grpc::Status status = stream_->Finish();
  if (!status.ok()) throw LudusError(status);
}

// --- PolicyWatch ---------------------------------------------------------------------------------

PolicyWatch::PolicyWatch(v1::Trainer::Stub* stub, const ClientOptions& options, const v1::WatchPolicyRequest& request,
                         std::chrono::milliseconds deadline, bool wait_for_ready) {
  PrepareContext(&context_, options, deadline);
  context_.set_wait_for_ready(wait_for_ready);
  reader_ = stub->WatchPolicy(&context_, request);
}

PolicyWatch::~PolicyWatch() {
  if (!finished_) {
    context_.TryCancel();
    reader_->Finish();
  }
}

bool PolicyWatch::Next(PolicyBlob* out) {
  if (finished_) return false;
  v1::PolicyChunk chunk;
  while (reader_->Read(&chunk)) {
    if (assembler_.Add(chunk, out)) return true;
  }
  finished_ = true;
  const grpc::Status status = reader_->Finish();
  if (status.error_code() == grpc::StatusCode::CANCELLED) return false;
  if (!status.ok()) throw LudusError(status);
  return false;  // the server ended the stream (it shut down cleanly)
}

// --- Client --------------------------------------------------------------------------------------

Client::Client(const std::string& target, ClientOptions options) : target_(target), options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Reconnect to a restarted server within seconds: gRPC's own backoff otherwise grows to 120 s.
  const auto reconnect_ms = [](std::chrono::milliseconds ms) { return static_cast<int>(std::max<int64_t>(ms.count(), 100)); };
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, reconnect_ms(options_.retry.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, reconnect_ms(options_.retry.max_backoff));
  channel_ = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  stub_ = v1::Trainer::NewStub(channel_);
}

bool Client::WaitReady(std::chrono::milliseconds timeout) {
  return channel_->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

v1::RegisterBehaviorResponse Client::RegisterBehavior(const std::string& behavior_name, const v1::BehaviorSpec& spec,
                                                      const std::string& settings_json) {
  v1::RegisterBehaviorRequest request;
  request.set_behavior_name(behavior_name);
  *request.mutable_spec() = spec;
  if (!settings_json.empty()) {
    const auto parsed = google::protobuf::util::JsonStringToMessage(settings_json, request.mutable_settings());
    if (!parsed.ok()) throw LudusError(grpc::StatusCode::INVALID_ARGUMENT, "settings: not a JSON object: " + parsed.ToString());
  }
  return RetryUnavailable(options_.retry, [&] {
    grpc::ClientContext context;
    PrepareContext(&context, options_, options_.timeout);
    v1::RegisterBehaviorResponse response;
    const grpc::Status status = stub_->RegisterBehavior(&context, request, &response);
    if (!status.ok()) throw LudusError(status);
    return response;
  });
}

v1::DescribeBehaviorResponse Client::DescribeBehavior(const std::string& behavior_name) {
  v1::DescribeBehaviorRequest request;
  request.set_behavior_name(behavior_name);
  return RetryUnavailable(options_.retry, [&] {
    grpc::ClientContext context;
    PrepareContext(&context, options_, options_.timeout);
    v1::DescribeBehaviorResponse response;
    const grpc::Status status = stub_->DescribeBehavior(&context, request, &response);
    if (!status.ok()) throw LudusError(status);
    return response;
  });
}

PolicyBlob Client::GetPolicy(const std::string& behavior_name, int64_t version) {
  v1::GetPolicyRequest request;
  request.set_behavior_name(behavior_name);
  request.set_version(version);
  request.set_format(v1::POLICY_FORMAT_SAFETENSORS);
  return RetryUnavailable(options_.retry, [&] {
    grpc::ClientContext context;
    PrepareContext(&context, options_, options_.timeout);
    auto reader = stub_->GetPolicy(&context, request);
    ChunkAssembler assembler;
    PolicyBlob blob;
    int complete = 0;
    v1::PolicyChunk chunk;
    try {
      while (reader->Read(&chunk)) {
        if (assembler.Add(chunk, &blob)) ++complete;
      }
    } catch (const LudusError&) {
      context.TryCancel();  // a corrupt stream: stop it, finish the call, report the corruption
      reader->Finish();
      throw;
    }
    const grpc::Status status = reader->Finish();
    if (!status.ok()) throw LudusError(status);
    if (complete != 1) {
      throw LudusError(grpc::StatusCode::DATA_LOSS, "GetPolicy: expected one policy, received " + std::to_string(complete));
    }
    return blob;
  });
}

std::unique_ptr<TrajectoryStream> Client::OpenTrajectoryStream() {
  return std::make_unique<TrajectoryStream>(stub_.get(), options_);
}

std::unique_ptr<PolicyWatch> Client::WatchPolicy(const std::string& behavior_name, int64_t after_version,
                                                 std::chrono::milliseconds deadline) {
  v1::WatchPolicyRequest request;
  request.set_behavior_name(behavior_name);
  request.set_after_version(after_version);
  request.set_format(v1::POLICY_FORMAT_SAFETENSORS);
  return std::make_unique<PolicyWatch>(stub_.get(), options_, request, deadline);
}

// --- ReliableTrajectoryStream --------------------------------------------------------------------

ReliableTrajectoryStream::ReliableTrajectoryStream(Client* client, std::string behavior_name)
    : ReliableTrajectoryStream(client, std::move(behavior_name), client->options().retry) {}

ReliableTrajectoryStream::ReliableTrajectoryStream(Client* client, std::string behavior_name, const RetryOptions& retry)
    : client_(client), behavior_name_(std::move(behavior_name)), backoff_(retry) {}

v1::SubmitTrajectoriesResponse ReliableTrajectoryStream::Submit(const v1::Trajectory& trajectory) {
  for (;;) {
    try {
      if (!stream_) {
        // Wait for the connection here (bounded), then open without wait_for_ready: a stream
        // waiting for a server that never comes back would never give up.
        const auto timeout = backoff_.CapToGiveUp(client_->options().timeout);
        if (!WaitConnected(client_->channel(), timeout, [] { return true; })) {
          throw LudusError(grpc::StatusCode::UNAVAILABLE, "SubmitTrajectories: no connection to the server within " + Seconds(timeout));
        }
        stream_ = std::make_unique<TrajectoryStream>(client_->stub(), client_->options(), /*wait_for_ready=*/false);
      }
      const v1::SubmitTrajectoriesResponse ack = stream_->Submit(behavior_name_, trajectory);
      backoff_.Reset();
      return ack;
    } catch (const LudusError& error) {
      stream_.reset();  // already finished by the failure; a new one is opened for the next attempt
      const auto wait = backoff_.Next(error);  // throws permanent errors, and after give_up_after
      ++reconnects_;
      std::this_thread::sleep_for(wait);
    }
  }
}

void ReliableTrajectoryStream::Close() {
  if (!stream_) return;
  std::unique_ptr<TrajectoryStream> stream = std::move(stream_);
  try {
    stream->Close();
  } catch (const LudusError& error) {
    if (!IsTransient(error.code())) throw;
  }
}

// --- ReliablePolicyWatch -------------------------------------------------------------------------

ReliablePolicyWatch::ReliablePolicyWatch(Client* client, std::string behavior_name, int64_t after_version)
    : ReliablePolicyWatch(client, std::move(behavior_name), after_version, client->options().retry) {}

ReliablePolicyWatch::ReliablePolicyWatch(Client* client, std::string behavior_name, int64_t after_version,
                                         const RetryOptions& retry)
    : client_(client), behavior_name_(std::move(behavior_name)), last_version_(after_version), backoff_(retry) {}

bool ReliablePolicyWatch::Cancelled() {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

void ReliablePolicyWatch::Cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_ = true;
  if (watch_) watch_->Cancel();
  cancel_signal_.notify_all();
}

bool ReliablePolicyWatch::Open() {
  // Wait for the connection in short slices, so that Cancel() is honoured meanwhile.
  const auto timeout = backoff_.CapToGiveUp(client_->options().timeout);
  if (!WaitConnected(client_->channel(), timeout, [this] { return !Cancelled(); })) {
    if (Cancelled()) return false;
    throw LudusError(grpc::StatusCode::UNAVAILABLE, "WatchPolicy: no connection to the server within " + Seconds(timeout));
  }
  v1::WatchPolicyRequest request;
  request.set_behavior_name(behavior_name_);
  request.set_after_version(reopening_ ? 0 : last_version_);  // reopened: the server's current version first
  request.set_format(v1::POLICY_FORMAT_SAFETENSORS);
  reopening_ = true;
  auto watch = std::make_unique<PolicyWatch>(client_->stub(), client_->options(), request, std::chrono::milliseconds(0),
                                             /*wait_for_ready=*/false);
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancelled_) return false;  // `watch` is cancelled and finished on the way out
  watch_ = std::move(watch);
  return true;
}

bool ReliablePolicyWatch::Next(PolicyBlob* out) {
  for (;;) {
    if (Cancelled()) return false;
    try {
      if (!watch_ && !Open()) return false;
      PolicyBlob blob;
      if (watch_->Next(&blob)) {
        backoff_.Reset();
        // A reopened watch repeats the current policy; deliver it only if it changed meanwhile.
        if (blob.version == last_version_ && (last_sha256_.empty() || blob.sha256 == last_sha256_)) continue;
        last_version_ = blob.version;
        last_sha256_ = blob.sha256;
        *out = std::move(blob);
        return true;
      }
      if (Cancelled()) return false;
      throw LudusError(grpc::StatusCode::UNAVAILABLE, "WatchPolicy: the server ended the stream");
    } catch (const LudusError& error) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        watch_.reset();
        if (cancelled_) return false;
      }
      const auto wait = backoff_.Next(error);  // throws permanent errors, and after give_up_after
      ++reconnects_;
      std::unique_lock<std::mutex> lock(mutex_);
      if (cancel_signal_.wait_for(lock, wait, [this] { return cancelled_; })) return false;
    }
  }
}

}  // namespace ludus
