from ambit.api import config_pb2 as _config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ()
    def __init__(self) -> None: ...

class ProxyStatus(_message.Message):
    __slots__ = ("node", "connected", "state", "acked_version", "proxy_version", "report_age", "report_json", "nack")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_AGE_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    node: _config_pb2.Node
    connected: bool
    state: str
    acked_version: str
    proxy_version: str
    report_age: float
    report_json: bytes
    nack: str
    def __init__(self, node: _Optional[_Union[_config_pb2.Node, _Mapping]] = ..., connected: _Optional[bool] = ..., state: _Optional[str] = ..., acked_version: _Optional[str] = ..., proxy_version: _Optional[str] = ..., report_age: _Optional[float] = ..., report_json: _Optional[bytes] = ..., nack: _Optional[str] = ...) -> None: ...

class ProxyStatusResponse(_message.Message):
    __slots__ = ("controller_version", "config_version", "proxies")
    CONTROLLER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROXIES_FIELD_NUMBER: _ClassVar[int]
    controller_version: str
    config_version: str
    proxies: _containers.RepeatedCompositeFieldContainer[ProxyStatus]
    def __init__(self, controller_version: _Optional[str] = ..., config_version: _Optional[str] = ..., proxies: _Optional[_Iterable[_Union[ProxyStatus, _Mapping]]] = ...) -> None: ...

class ProxyConfigRequest(_message.Message):
    __slots__ = ("proxy",)
    PROXY_FIELD_NUMBER: _ClassVar[int]
    proxy: str
    def __init__(self, proxy: _Optional[str] = ...) -> None: ...

class JsonDocument(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...
