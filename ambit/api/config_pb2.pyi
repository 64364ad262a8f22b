import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("kind", "name", "waypoint", "instance_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    waypoint: str
    instance_id: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., waypoint: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class DeltaRequest(_message.Message):
    __slots__ = ("node", "type_url", "subscribe", "initial_resource_versions", "response_nonce", "error_detail")
    class InitialResourceVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_RESOURCE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    node: Node
    type_url: str
    subscribe: bool
    initial_resource_versions: _containers.ScalarMap[str, str]
    response_nonce: str
    error_detail: ErrorDetail
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., type_url: _Optional[str] = ..., subscribe: _Optional[bool] = ..., initial_resource_versions: _Optional[_Mapping[str, str]] = ..., response_nonce: _Optional[str] = ..., error_detail: _Optional[_Union[ErrorDetail, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("name", "version", "body")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    body: bytes
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., body: _Optional[bytes] = ...) -> None: ...

class DeltaResponse(_message.Message):
    __slots__ = ("type_url", "system_version_info", "nonce", "resources", "removed_resources")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_RESOURCES_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    system_version_info: str
    nonce: str
    resources: _containers.RepeatedCompositeFieldContainer[Resource]
    removed_resources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type_url: _Optional[str] = ..., system_version_info: _Optional[str] = ..., nonce: _Optional[str] = ..., resources: _Optional[_Iterable[_Union[Resource, _Mapping]]] = ..., removed_resources: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("local_only",)
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    local_only: bool
    def __init__(self, local_only: _Optional[bool] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "nonce", "message", "time")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    version: str
    nonce: str
    message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[str] = ..., nonce: _Optional[str] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TypeStatus(_message.Message):
    __slots__ = ("type_url", "acked_version", "sent_version", "in_sync", "resources", "last_nack")
    TYPE_URL_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LAST_NACK_FIELD_NUMBER: _ClassVar[int]
    type_url: str
    acked_version: str
    sent_version: str
    in_sync: bool
    resources: int
    last_nack: Nack
    def __init__(self, type_url: _Optional[str] = ..., acked_version: _Optional[str] = ..., sent_version: _Optional[str] = ..., in_sync: _Optional[bool] = ..., resources: _Optional[int] = ..., last_nack: _Optional[_Union[Nack, _Mapping]] = ...) -> None: ...

class SubscriberStatus(_message.Message):
    __slots__ = ("node", "connected", "connected_since", "disconnected_at", "peer", "types", "replica")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    node: Node
    connected: bool
    connected_since: _timestamp_pb2.Timestamp
    disconnected_at: _timestamp_pb2.Timestamp
    peer: str
    types: _containers.RepeatedCompositeFieldContainer[TypeStatus]
    replica: str
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., connected: _Optional[bool] = ..., connected_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., disconnected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., peer: _Optional[str] = ..., types: _Optional[_Iterable[_Union[TypeStatus, _Mapping]]] = ..., replica: _Optional[str] = ...) -> None: ...

class ConfigError(_message.Message):
    __slots__ = ("ref", "path", "reason", "replicas")
    REF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ref: str
    path: str
    reason: str
    replicas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[str] = ..., path: _Optional[str] = ..., reason: _Optional[str] = ..., replicas: _Optional[_Iterable[str]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("version", "subscribers", "config_errors", "replica", "replicas")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_ERRORS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    version: str
    subscribers: _containers.RepeatedCompositeFieldContainer[SubscriberStatus]
    config_errors: _containers.RepeatedCompositeFieldContainer[ConfigError]
    replica: str
    replicas: _containers.RepeatedCompositeFieldContainer[StatusReplica]
    def __init__(self, version: _Optional[str] = ..., subscribers: _Optional[_Iterable[_Union[SubscriberStatus, _Mapping]]] = ..., config_errors: _Optional[_Iterable[_Union[ConfigError, _Mapping]]] = ..., replica: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[StatusReplica, _Mapping]]] = ...) -> None: ...

class StatusReplica(_message.Message):
    __slots__ = ("name", "address", "answered", "error", "version", "subscribers", "ca_problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    CA_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    answered: bool
    error: str
    version: str
    subscribers: int
    ca_problem: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., answered: _Optional[bool] = ..., error: _Optional[str] = ..., version: _Optional[str] = ..., subscribers: _Optional[int] = ..., ca_problem: _Optional[str] = ...) -> None: ...
