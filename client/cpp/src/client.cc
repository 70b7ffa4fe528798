#include "ludus/client.h"

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
}  // namespace

LudusError::LudusError(grpc::StatusCode code, const std::string& details)
    : std::runtime_error(CodeName(code) + ": " + details), code_(code) {}

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

TrajectoryStream::TrajectoryStream(v1::Trainer::Stub* stub, const ClientOptions& options) {
  PrepareContext(&context_, options, std::chrono::milliseconds(0));  // lives as long as the simulator
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
                         std::chrono::milliseconds deadline) {
  PrepareContext(&context_, options, deadline);
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
  grpc::ClientContext context;
  PrepareContext(&context, options_, options_.timeout);
  v1::RegisterBehaviorResponse response;
  const grpc::Status status = stub_->RegisterBehavior(&context, request, &response);
  if (!status.ok()) throw LudusError(status);
  return response;
}

v1::DescribeBehaviorResponse Client::DescribeBehavior(const std::string& behavior_name) {
  v1::DescribeBehaviorRequest request;
  request.set_behavior_name(behavior_name);
  grpc::ClientContext context;
  PrepareContext(&context, options_, options_.timeout);
  v1::DescribeBehaviorResponse response;
  const grpc::Status status = stub_->DescribeBehavior(&context, request, &response);
  if (!status.ok()) throw LudusError(status);
  return response;
}

PolicyBlob Client::GetPolicy(const std::string& behavior_name, int64_t version) {
  v1::GetPolicyRequest request;
  request.set_behavior_name(behavior_name);
  request.set_version(version);
  request.set_format(v1::POLICY_FORMAT_SAFETENSORS);
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

}  // namespace ludus
