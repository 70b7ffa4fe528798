from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_PNG: _ClassVar[Compression]

class ObservationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_KIND_UNSPECIFIED: _ClassVar[ObservationKind]
    OBSERVATION_KIND_VECTOR: _ClassVar[ObservationKind]
    OBSERVATION_KIND_VISUAL: _ClassVar[ObservationKind]
    OBSERVATION_KIND_ENTITIES: _ClassVar[ObservationKind]

class ObservationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_TYPE_DEFAULT: _ClassVar[ObservationType]
    OBSERVATION_TYPE_GOAL_SIGNAL: _ClassVar[ObservationType]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_NONE: _ClassVar[DropReason]
    DROP_REASON_STALE_POLICY_VERSION: _ClassVar[DropReason]
    DROP_REASON_UNKNOWN_POLICY_VERSION: _ClassVar[DropReason]

class PolicyFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_FORMAT_UNSPECIFIED: _ClassVar[PolicyFormat]
    POLICY_FORMAT_SAFETENSORS: _ClassVar[PolicyFormat]
    POLICY_FORMAT_ONNX: _ClassVar[PolicyFormat]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_BOOL: DataType
COMPRESSION_NONE: Compression
COMPRESSION_PNG: Compression
OBSERVATION_KIND_UNSPECIFIED: ObservationKind
OBSERVATION_KIND_VECTOR: ObservationKind
OBSERVATION_KIND_VISUAL: ObservationKind
OBSERVATION_KIND_ENTITIES: ObservationKind
OBSERVATION_TYPE_DEFAULT: ObservationType
OBSERVATION_TYPE_GOAL_SIGNAL: ObservationType
DROP_REASON_NONE: DropReason
DROP_REASON_STALE_POLICY_VERSION: DropReason
DROP_REASON_UNKNOWN_POLICY_VERSION: DropReason
POLICY_FORMAT_UNSPECIFIED: PolicyFormat
POLICY_FORMAT_SAFETENSORS: PolicyFormat
POLICY_FORMAT_ONNX: PolicyFormat

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "raw_data", "compression", "compressed_data", "compressed_channel_mapping")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_DATA_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_CHANNEL_MAPPING_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw_data: bytes
    compression: Compression
    compressed_data: _containers.RepeatedScalarFieldContainer[bytes]
    compressed_channel_mapping: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., raw_data: _Optional[bytes] = ..., compression: _Optional[_Union[Compression, str]] = ..., compressed_data: _Optional[_Iterable[bytes]] = ..., compressed_channel_mapping: _Optional[_Iterable[int]] = ...) -> None: ...

class ObservationSpec(_message.Message):
    __slots__ = ("name", "shape", "kind", "observation_type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    kind: ObservationKind
    observation_type: ObservationType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., kind: _Optional[_Union[ObservationKind, str]] = ..., observation_type: _Optional[_Union[ObservationType, str]] = ...) -> None: ...

class ActionSpec(_message.Message):
    __slots__ = ("continuous_size", "discrete_branches")
    CONTINUOUS_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    continuous_size: int
    discrete_branches: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, continuous_size: _Optional[int] = ..., discrete_branches: _Optional[_Iterable[int]] = ...) -> None: ...

class BehaviorSpec(_message.Message):
    __slots__ = ("observations", "actions")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[ObservationSpec]
    actions: ActionSpec
    def __init__(self, observations: _Optional[_Iterable[_Union[ObservationSpec, _Mapping]]] = ..., actions: _Optional[_Union[ActionSpec, _Mapping]] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("agent_id", "policy_version", "observations", "continuous_actions", "discrete_actions", "continuous_log_probs", "discrete_log_probs", "rewards", "action_masks", "done", "interrupted", "next_observations", "memories")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    ACTION_MASKS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    policy_version: int
    observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    continuous_actions: Tensor
    discrete_actions: Tensor
    continuous_log_probs: Tensor
    discrete_log_probs: Tensor
    rewards: Tensor
    action_masks: Tensor
    done: bool
    interrupted: bool
    next_observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    memories: Tensor
    def __init__(self, agent_id: _Optional[str] = ..., policy_version: _Optional[int] = ..., observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., continuous_actions: _Optional[_Union[Tensor, _Mapping]] = ..., discrete_actions: _Optional[_Union[Tensor, _Mapping]] = ..., continuous_log_probs: _Optional[_Union[Tensor, _Mapping]] = ..., discrete_log_probs: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Union[Tensor, _Mapping]] = ..., action_masks: _Optional[_Union[Tensor, _Mapping]] = ..., done: _Optional[bool] = ..., interrupted: _Optional[bool] = ..., next_observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., memories: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class RegisterBehaviorRequest(_message.Message):
    __slots__ = ("behavior_name", "spec", "settings")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    spec: BehaviorSpec
    settings: _struct_pb2.Struct
    def __init__(self, behavior_name: _Optional[str] = ..., spec: _Optional[_Union[BehaviorSpec, _Mapping]] = ..., settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RegisterBehaviorResponse(_message.Message):
    __slots__ = ("policy_version", "created", "effective_settings", "reward_signals")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    created: bool
    effective_settings: _struct_pb2.Struct
    reward_signals: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, policy_version: _Optional[int] = ..., created: _Optional[bool] = ..., effective_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reward_signals: _Optional[_Iterable[str]] = ...) -> None: ...

class EstimateValuesRequest(_message.Message):
    __slots__ = ("behavior_name", "agent_id", "observations", "next_observations", "done", "interrupted", "continuous_actions", "discrete_actions", "rewards")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    agent_id: str
    observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    next_observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    done: bool
    interrupted: bool
    continuous_actions: Tensor
    discrete_actions: Tensor
    rewards: Tensor
    def __init__(self, behavior_name: _Optional[str] = ..., agent_id: _Optional[str] = ..., observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., next_observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., done: _Optional[bool] = ..., interrupted: _Optional[bool] = ..., continuous_actions: _Optional[_Union[Tensor, _Mapping]] = ..., discrete_actions: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EstimateValuesResponse(_message.Message):
    __slots__ = ("values", "bootstrap_values", "critic_memories", "policy_version", "signal_rewards")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class BootstrapValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SignalRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_VALUES_FIELD_NUMBER: _ClassVar[int]
    CRITIC_MEMORIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_REWARDS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.MessageMap[str, Tensor]
    bootstrap_values: _containers.ScalarMap[str, float]
    critic_memories: Tensor
    policy_version: int
    signal_rewards: _containers.MessageMap[str, Tensor]
    def __init__(self, values: _Optional[_Mapping[str, Tensor]] = ..., bootstrap_values: _Optional[_Mapping[str, float]] = ..., critic_memories: _Optional[_Union[Tensor, _Mapping]] = ..., policy_version: _Optional[int] = ..., signal_rewards: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class TrainingBatch(_message.Message):
    __slots__ = ("observations", "continuous_actions", "discrete_actions", "continuous_log_probs", "discrete_log_probs", "action_masks", "advantages", "returns", "value_estimates", "memories", "critic_memories", "loss_masks", "rewards", "next_observations", "dones")
    class ReturnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class ValueEstimatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTINUOUS_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    DISCRETE_LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    ACTION_MASKS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    RETURNS_FIELD_NUMBER: _ClassVar[int]
    VALUE_ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    CRITIC_MEMORIES_FIELD_NUMBER: _ClassVar[int]
    LOSS_MASKS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    DONES_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    continuous_actions: Tensor
    discrete_actions: Tensor
    continuous_log_probs: Tensor
    discrete_log_probs: Tensor
    action_masks: Tensor
    advantages: Tensor
    returns: _containers.MessageMap[str, Tensor]
    value_estimates: _containers.MessageMap[str, Tensor]
    memories: Tensor
    critic_memories: Tensor
    loss_masks: Tensor
    rewards: Tensor
    next_observations: _containers.RepeatedCompositeFieldContainer[Tensor]
    dones: Tensor
    def __init__(self, observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., continuous_actions: _Optional[_Union[Tensor, _Mapping]] = ..., discrete_actions: _Optional[_Union[Tensor, _Mapping]] = ..., continuous_log_probs: _Optional[_Union[Tensor, _Mapping]] = ..., discrete_log_probs: _Optional[_Union[Tensor, _Mapping]] = ..., action_masks: _Optional[_Union[Tensor, _Mapping]] = ..., advantages: _Optional[_Union[Tensor, _Mapping]] = ..., returns: _Optional[_Mapping[str, Tensor]] = ..., value_estimates: _Optional[_Mapping[str, Tensor]] = ..., memories: _Optional[_Union[Tensor, _Mapping]] = ..., critic_memories: _Optional[_Union[Tensor, _Mapping]] = ..., loss_masks: _Optional[_Union[Tensor, _Mapping]] = ..., rewards: _Optional[_Union[Tensor, _Mapping]] = ..., next_observations: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., dones: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("behavior_name", "batch", "num_sequences")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    NUM_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    batch: TrainingBatch
    num_sequences: int
    def __init__(self, behavior_name: _Optional[str] = ..., batch: _Optional[_Union[TrainingBatch, _Mapping]] = ..., num_sequences: _Optional[int] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("stats", "policy_version")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.ScalarMap[str, float]
    policy_version: int
    def __init__(self, stats: _Optional[_Mapping[str, float]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class SubmitTrajectoriesRequest(_message.Message):
    __slots__ = ("behavior_name", "trajectory", "evaluate_signals")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    trajectory: Trajectory
    evaluate_signals: bool
    def __init__(self, behavior_name: _Optional[str] = ..., trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., evaluate_signals: _Optional[bool] = ...) -> None: ...

class SubmitTrajectoriesResponse(_message.Message):
    __slots__ = ("accepted_steps", "dropped_steps", "drop_reason", "policy_version", "latest_update_stats", "total_steps", "signal_rewards", "signal_values")
    class LatestUpdateStatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SignalRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    class SignalValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ACCEPTED_STEPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_STEPS_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_UPDATE_STATS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_REWARDS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_VALUES_FIELD_NUMBER: _ClassVar[int]
    accepted_steps: int
    dropped_steps: int
    drop_reason: DropReason
    policy_version: int
    latest_update_stats: _containers.ScalarMap[str, float]
    total_steps: int
    signal_rewards: _containers.MessageMap[str, Tensor]
    signal_values: _containers.MessageMap[str, Tensor]
    def __init__(self, accepted_steps: _Optional[int] = ..., dropped_steps: _Optional[int] = ..., drop_reason: _Optional[_Union[DropReason, str]] = ..., policy_version: _Optional[int] = ..., latest_update_stats: _Optional[_Mapping[str, float]] = ..., total_steps: _Optional[int] = ..., signal_rewards: _Optional[_Mapping[str, Tensor]] = ..., signal_values: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class RecordDemonstrationRequest(_message.Message):
    __slots__ = ("behavior_name", "demonstration_name", "trajectory", "overwrite")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    DEMONSTRATION_NAME_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    demonstration_name: str
    trajectory: Trajectory
    overwrite: bool
    def __init__(self, behavior_name: _Optional[str] = ..., demonstration_name: _Optional[str] = ..., trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., overwrite: _Optional[bool] = ...) -> None: ...

class RecordDemonstrationResponse(_message.Message):
    __slots__ = ("demo_path", "steps", "episodes", "mean_reward")
    DEMO_PATH_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    demo_path: str
    steps: int
    episodes: int
    mean_reward: float
    def __init__(self, demo_path: _Optional[str] = ..., steps: _Optional[int] = ..., episodes: _Optional[int] = ..., mean_reward: _Optional[float] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("behavior_name", "version", "format")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    version: int
    format: PolicyFormat
    def __init__(self, behavior_name: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[PolicyFormat, str]] = ...) -> None: ...

class WatchPolicyRequest(_message.Message):
    __slots__ = ("behavior_name", "after_version", "format", "versions_only")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_ONLY_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    after_version: int
    format: PolicyFormat
    versions_only: bool
    def __init__(self, behavior_name: _Optional[str] = ..., after_version: _Optional[int] = ..., format: _Optional[_Union[PolicyFormat, str]] = ..., versions_only: _Optional[bool] = ...) -> None: ...

class PolicyChunk(_message.Message):
    __slots__ = ("behavior_name", "version", "format", "offset", "total_size", "data", "last", "sha256", "trained_steps")
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINED_STEPS_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    version: int
    format: PolicyFormat
    offset: int
    total_size: int
    data: bytes
    last: bool
    sha256: str
    trained_steps: int
    def __init__(self, behavior_name: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[PolicyFormat, str]] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ..., trained_steps: _Optional[int] = ...) -> None: ...

class DescribeBehaviorRequest(_message.Message):
    __slots__ = ("behavior_name",)
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    def __init__(self, behavior_name: _Optional[str] = ...) -> None: ...

class DescribeBehaviorResponse(_message.Message):
    __slots__ = ("behavior_name", "spec", "effective_settings", "reward_signals", "policy_version", "total_steps", "buffered_steps", "queued_steps", "dropped_stale_steps", "latest_update_stats")
    class LatestUpdateStatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BEHAVIOR_NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REWARD_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_STEPS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_STEPS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_STALE_STEPS_FIELD_NUMBER: _ClassVar[int]
    LATEST_UPDATE_STATS_FIELD_NUMBER: _ClassVar[int]
    behavior_name: str
    spec: BehaviorSpec
    effective_settings: _struct_pb2.Struct
    reward_signals: _containers.RepeatedScalarFieldContainer[str]
    policy_version: int
    total_steps: int
    buffered_steps: int
    queued_steps: int
    dropped_stale_steps: int
    latest_update_stats: _containers.ScalarMap[str, float]
    def __init__(self, behavior_name: _Optional[str] = ..., spec: _Optional[_Union[BehaviorSpec, _Mapping]] = ..., effective_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reward_signals: _Optional[_Iterable[str]] = ..., policy_version: _Optional[int] = ..., total_steps: _Optional[int] = ..., buffered_steps: _Optional[int] = ..., queued_steps: _Optional[int] = ..., dropped_stale_steps: _Optional[int] = ..., latest_update_stats: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListBehaviorsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBehaviorsResponse(_message.Message):
    __slots__ = ("behavior_names",)
    BEHAVIOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    behavior_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, behavior_names: _Optional[_Iterable[str]] = ...) -> None: ...
