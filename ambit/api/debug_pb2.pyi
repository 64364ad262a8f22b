from ambit.api import config_pb2 as _config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TapFilter(_message.Message):
    __slots__ = ("namespace", "to", "pod", "status", "verdict", "layer")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    to: str
    pod: str
    status: str
    verdict: str
    layer: str
    def __init__(self, namespace: _Optional[str] = ..., to: _Optional[str] = ..., pod: _Optional[str] = ..., status: _Optional[str] = ..., verdict: _Optional[str] = ..., layer: _Optional[str] = ..., **kwargs) -> None: ...

class FeedControl(_message.Message):
    __slots__ = ("filters", "scrape", "generation")
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[TapFilter]
    scrape: int
    generation: int
    def __init__(self, filters: _Optional[_Iterable[_Union[TapFilter, _Mapping]]] = ..., scrape: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class FeedUpload(_message.Message):
    __slots__ = ("node", "events_json", "dropped", "scrape", "metrics", "generation")
    NODE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SCRAPE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    node: _config_pb2.Node
    events_json: _containers.RepeatedScalarFieldContainer[bytes]
    dropped: int
    scrape: int
    metrics: str
    generation: int
    def __init__(self, node: _Optional[_Union[_config_pb2.Node, _Mapping]] = ..., events_json: _Optional[_Iterable[bytes]] = ..., dropped: _Optional[int] = ..., scrape: _Optional[int] = ..., metrics: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("filter", "local_only")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    filter: TapFilter
    local_only: bool
    def __init__(self, filter: _Optional[_Union[TapFilter, _Mapping]] = ..., local_only: _Optional[bool] = ...) -> None: ...

class TapEvent(_message.Message):
    __slots__ = ("json", "replica")
    JSON_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    replica: str
    def __init__(self, json: _Optional[bytes] = ..., replica: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("timeout", "local_only")
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    timeout: float
    local_only: bool
    def __init__(self, timeout: _Optional[float] = ..., local_only: _Optional[bool] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("metrics", "missing", "replica", "replicas")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ReplicaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    replica: _containers.ScalarMap[str, str]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, metrics: _Optional[_Mapping[str, str]] = ..., missing: _Optional[_Iterable[str]] = ..., replica: _Optional[_Mapping[str, str]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class ProxyReport(_message.Message):
    __slots__ = ("node", "version", "state_json")
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    node: _config_pb2.Node
    version: str
    state_json: bytes
    def __init__(self, node: _Optional[_Union[_config_pb2.Node, _Mapping]] = ..., version: _Optional[str] = ..., state_json: _Optional[bytes] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ("controller_version", "interval")
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    controller_version: str
    interval: float
    def __init__(self, controller_version: _Optional[str] = ..., interval: _Optional[float] = ...) -> None: ...

class ProxyStatusRequest(_message.Message):
    __slots__ = ("objects", "local_only")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectRef]
    local_only: bool
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectRef, _Mapping]]] = ..., local_only: _Optional[bool] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ObservedObject(_message.Message):
    __slots__ = ("ref", "present", "resource_version")
    REF_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ref: ObjectRef
    present: bool
    resource_version: str
    def __init__(self, ref: _Optional[_Union[ObjectRef, _Mapping]] = ..., present: _Optional[bool] = ..., resource_version: _Optional[str] = ...) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("node", "connected", "state", "acked_version", "proxy_version", "report_age", "report_json", "nack", "replica")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_AGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    node: _config_pb2.Node
    connected: bool
    state: str
    acked_version: str
    proxy_version: str
    report_age: float
    report_json: bytes
    nack: str
    replica: str
    def __init__(self, node: _Optional[_Union[_config_pb2.Node, _Mapping]] = ..., connected: _Optional[bool] = ..., state: _Optional[str] = ..., acked_version: _Optional[str] = ..., proxy_version: _Optional[str] = ..., report_age: _Optional[float] = ..., report_json: _Optional[bytes] = ..., nack: _Optional[str] = ..., replica: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("name", "address", "answered", "error", "controller_version", "config_version", "snapshot_applied", "observed", "proxies", "ca_problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    CA_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    answered: bool
    error: str
    controller_version: str
    config_version: str
    snapshot_applied: bool
    observed: _containers.RepeatedCompositeFieldContainer[ObservedObject]
    proxies: int
    ca_problem: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., answered: _Optional[bool] = ..., error: _Optional[str] = ..., controller_version: _Optional[str] = ..., config_version: _Optional[str] = ..., snapshot_applied: _Optional[bool] = ..., observed: _Optional[_Iterable[_Union[ObservedObject, _Mapping]]] = ..., proxies: _Optional[int] = ..., ca_problem: _Optional[str] = ...) -> None: ...

class ProxyStatusResponse(_message.Message):
    __slots__ = ("controller_version", "config_version", "proxies", "observed", "snapshot_applied", "replica", "replicas")
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_APPLIED_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    controller_version: str
    config_version: str
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyStatus]
    observed: _containers.RepeatedCompositeFieldContainer[ObservedObject]
    snapshot_applied: bool
    replica: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, controller_version: _Optional[str] = ..., config_version: _Optional[str] = ..., proxies: _Optional[_Iterable[_Union[ProxyStatus, _Mapping]]] = ..., observed: _Optional[_Iterable[_Union[ObservedObject, _Mapping]]] = ..., snapshot_applied: _Optional[bool] = ..., replica: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class ProxyConfigRequest(_message.Message):
    __slots__ = ("proxy", "local_only")
    PROXY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    proxy: str
    local_only: bool
    def __init__(self, proxy: _Optional[str] = ..., local_only: _Optional[bool] = ...) -> None: ...

class JsonDocument(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...
