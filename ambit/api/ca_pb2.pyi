from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CSRRequest(_message.Message):
    __slots__ = ("csr_pem", "identity", "ttl_seconds")
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    identity: str
    ttl_seconds: int
    def __init__(self, csr_pem: _Optional[str] = ..., identity: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CSRResponse(_message.Message):
    __slots__ = ("cert_chain", "trust_bundle")
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TRUST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    cert_chain: _containers.RepeatedScalarFieldContainer[str]
    trust_bundle: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cert_chain: _Optional[_Iterable[str]] = ..., trust_bundle: _Optional[_Iterable[str]] = ...) -> None: ...
