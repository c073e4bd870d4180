import datetime

from audit.v1 import entry_pb2 as _entry_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Order(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_UNSPECIFIED: _ClassVar[Order]
    ORDER_ASCENDING: _ClassVar[Order]
    ORDER_DESCENDING: _ClassVar[Order]

class ForwarderState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORWARDER_STATE_UNSPECIFIED: _ClassVar[ForwarderState]
    FORWARDER_STATE_RUNNING: _ClassVar[ForwarderState]
    FORWARDER_STATE_RETRYING: _ClassVar[ForwarderState]
    FORWARDER_STATE_HALTED: _ClassVar[ForwarderState]
    FORWARDER_STATE_STANDBY: _ClassVar[ForwarderState]
ORDER_UNSPECIFIED: Order
ORDER_ASCENDING: Order
ORDER_DESCENDING: Order
FORWARDER_STATE_UNSPECIFIED: ForwarderState
FORWARDER_STATE_RUNNING: ForwarderState
FORWARDER_STATE_RETRYING: ForwarderState
FORWARDER_STATE_HALTED: ForwarderState
FORWARDER_STATE_STANDBY: ForwarderState

class RecordRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _entry_pb2.AuditEntry
    def __init__(self, entry: _Optional[_Union[_entry_pb2.AuditEntry, _Mapping]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("id", "sequence", "entry_hash")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    id: str
    sequence: int
    entry_hash: bytes
    def __init__(self, id: _Optional[str] = ..., sequence: _Optional[int] = ..., entry_hash: _Optional[bytes] = ...) -> None: ...

class RecordBatchRequest(_message.Message):
    __slots__ = ("request_id", "entries")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    entries: _containers.RepeatedCompositeFieldContainer[_entry_pb2.AuditEntry]
    def __init__(self, request_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[_entry_pb2.AuditEntry, _Mapping]]] = ...) -> None: ...

class RecordBatchResponse(_message.Message):
    __slots__ = ("request_id", "ids", "sequences", "entry_hashes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASHES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    entry_hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, request_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., sequences: _Optional[_Iterable[int]] = ..., entry_hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("request_id", "source", "method", "principal", "spiffe_id", "outcomes", "status_codes", "event", "category", "min_level", "start_time", "end_time", "labels", "resource")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODES_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MIN_LEVEL_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    source: str
    method: str
    principal: str
    spiffe_id: str
    outcomes: _containers.RepeatedScalarFieldContainer[_entry_pb2.Outcome]
    status_codes: _containers.RepeatedScalarFieldContainer[int]
    event: str
    category: str
    min_level: _entry_pb2.Level
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    resource: str
    def __init__(self, request_id: _Optional[str] = ..., source: _Optional[str] = ..., method: _Optional[str] = ..., principal: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., outcomes: _Optional[_Iterable[_Union[_entry_pb2.Outcome, str]]] = ..., status_codes: _Optional[_Iterable[int]] = ..., event: _Optional[str] = ..., category: _Optional[str] = ..., min_level: _Optional[_Union[_entry_pb2.Level, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., resource: _Optional[str] = ...) -> None: ...

class StartPosition(_message.Message):
    __slots__ = ("after_sequence", "received_time")
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    after_sequence: int
    received_time: _timestamp_pb2.Timestamp
    def __init__(self, after_sequence: _Optional[int] = ..., received_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("filter", "start")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    start: StartPosition
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., start: _Optional[_Union[StartPosition, _Mapping]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("entry", "heartbeat")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    entry: _entry_pb2.AuditEntry
    heartbeat: Heartbeat
    def __init__(self, entry: _Optional[_Union[_entry_pb2.AuditEntry, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sequence", "time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token", "order")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    filter: Filter
    page_size: int
    page_token: str
    order: Order
    def __init__(self, filter: _Optional[_Union[Filter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order: _Optional[_Union[Order, str]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("entries", "next_page_token", "pruned_through")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRUNED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_entry_pb2.AuditEntry]
    next_page_token: str
    pruned_through: int
    def __init__(self, entries: _Optional[_Iterable[_Union[_entry_pb2.AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., pruned_through: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("index", "origin", "size", "root_hash", "chain_hash", "time", "note")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HASH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    index: int
    origin: str
    size: int
    root_hash: bytes
    chain_hash: bytes
    time: _timestamp_pb2.Timestamp
    note: str
    def __init__(self, index: _Optional[int] = ..., origin: _Optional[str] = ..., size: _Optional[int] = ..., root_hash: _Optional[bytes] = ..., chain_hash: _Optional[bytes] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class GetCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "public_key")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    public_key: str
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., public_key: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("after_index", "page_size")
    AFTER_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    after_index: int
    page_size: int
    def __init__(self, after_index: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("sequence", "tree_size")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    tree_size: int
    def __init__(self, sequence: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class GetInclusionProofResponse(_message.Message):
    __slots__ = ("sequence", "tree_size", "entry_hash", "hashes")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    tree_size: int
    entry_hash: bytes
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sequence: _Optional[int] = ..., tree_size: _Optional[int] = ..., entry_hash: _Optional[bytes] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("first_size", "second_size")
    FIRST_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECOND_SIZE_FIELD_NUMBER: _ClassVar[int]
    first_size: int
    second_size: int
    def __init__(self, first_size: _Optional[int] = ..., second_size: _Optional[int] = ...) -> None: ...

class GetConsistencyProofResponse(_message.Message):
    __slots__ = ("first_size", "second_size", "hashes")
    FIRST_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECOND_SIZE_FIELD_NUMBER: _ClassVar[int]
    HASHES_FIELD_NUMBER: _ClassVar[int]
    first_size: int
    second_size: int
    hashes: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, first_size: _Optional[int] = ..., second_size: _Optional[int] = ..., hashes: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListForwardersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListForwardersResponse(_message.Message):
    __slots__ = ("forwarders",)
    FORWARDERS_FIELD_NUMBER: _ClassVar[int]
    forwarders: _containers.RepeatedCompositeFieldContainer[ForwarderStatus]
    def __init__(self, forwarders: _Optional[_Iterable[_Union[ForwarderStatus, _Mapping]]] = ...) -> None: ...

class ForwarderStatus(_message.Message):
    __slots__ = ("name", "destination", "format", "state", "position", "lag_entries", "lag", "last_error", "last_error_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    LAG_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    destination: str
    format: str
    state: ForwarderState
    position: int
    lag_entries: int
    lag: _duration_pb2.Duration
    last_error: str
    last_error_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., destination: _Optional[str] = ..., format: _Optional[str] = ..., state: _Optional[_Union[ForwarderState, str]] = ..., position: _Optional[int] = ..., lag_entries: _Optional[int] = ..., lag: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_error: _Optional[str] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HashValueRequest(_message.Message):
    __slots__ = ("value", "key_id")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    value: str
    key_id: str
    def __init__(self, value: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class HashValueResponse(_message.Message):
    __slots__ = ("hash", "key_id")
    HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    hash: str
    key_id: str
    def __init__(self, hash: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...
