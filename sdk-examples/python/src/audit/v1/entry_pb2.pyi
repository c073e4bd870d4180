import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEVEL_UNSPECIFIED: _ClassVar[Level]
    LEVEL_DEBUG: _ClassVar[Level]
    LEVEL_INFO: _ClassVar[Level]
    LEVEL_WARNING: _ClassVar[Level]
    LEVEL_ERROR: _ClassVar[Level]
    LEVEL_CRITICAL: _ClassVar[Level]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_DENIED: _ClassVar[Outcome]
    OUTCOME_ERROR: _ClassVar[Outcome]
LEVEL_UNSPECIFIED: Level
LEVEL_DEBUG: Level
LEVEL_INFO: Level
LEVEL_WARNING: Level
LEVEL_ERROR: Level
LEVEL_CRITICAL: Level
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_DENIED: Outcome
OUTCOME_ERROR: Outcome

class AuditEntry(_message.Message):
    __slots__ = ("id", "sequence", "request_id", "time", "received_time", "source", "method", "event", "category", "resource", "level", "outcome", "status_code", "status_message", "caller", "recorder", "latency", "details", "labels", "entry_hash", "chain_hash")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    RECORDER_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: int
    request_id: str
    time: _timestamp_pb2.Timestamp
    received_time: _timestamp_pb2.Timestamp
    source: str
    method: str
    event: str
    category: str
    resource: str
    level: Level
    outcome: Outcome
    status_code: int
    status_message: str
    caller: Caller
    recorder: Recorder
    latency: _duration_pb2.Duration
    details: _struct_pb2.Struct
    labels: _containers.ScalarMap[str, str]
    entry_hash: bytes
    chain_hash: bytes
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[int] = ..., request_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., method: _Optional[str] = ..., event: _Optional[str] = ..., category: _Optional[str] = ..., resource: _Optional[str] = ..., level: _Optional[_Union[Level, str]] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., status_code: _Optional[int] = ..., status_message: _Optional[str] = ..., caller: _Optional[_Union[Caller, _Mapping]] = ..., recorder: _Optional[_Union[Recorder, _Mapping]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., entry_hash: _Optional[bytes] = ..., chain_hash: _Optional[bytes] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("unix", "network", "principal", "role", "session_id", "user_agent")
    UNIX_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    unix: UnixPeer
    network: NetworkPeer
    principal: str
    role: str
    session_id: str
    user_agent: str
    def __init__(self, unix: _Optional[_Union[UnixPeer, _Mapping]] = ..., network: _Optional[_Union[NetworkPeer, _Mapping]] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., session_id: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class Recorder(_message.Message):
    __slots__ = ("unix", "network")
    UNIX_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    unix: UnixPeer
    network: NetworkPeer
    def __init__(self, unix: _Optional[_Union[UnixPeer, _Mapping]] = ..., network: _Optional[_Union[NetworkPeer, _Mapping]] = ...) -> None: ...

class UnixPeer(_message.Message):
    __slots__ = ("uid", "gid", "pid", "binary_path")
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    BINARY_PATH_FIELD_NUMBER: _ClassVar[int]
    uid: int
    gid: int
    pid: int
    binary_path: str
    def __init__(self, uid: _Optional[int] = ..., gid: _Optional[int] = ..., pid: _Optional[int] = ..., binary_path: _Optional[str] = ...) -> None: ...

class NetworkPeer(_message.Message):
    __slots__ = ("address", "spiffe_id", "certificate_subject")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    address: str
    spiffe_id: str
    certificate_subject: str
    def __init__(self, address: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., certificate_subject: _Optional[str] = ...) -> None: ...
