from rnnserve.v1 import models_pb2 as _models_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model", "previous_version", "sessions_dropped")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    previous_version: int
    sessions_dropped: int
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ..., previous_version: _Optional[int] = ..., sessions_dropped: _Optional[int] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("version", "sessions_dropped")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    version: int
    sessions_dropped: int
    def __init__(self, version: _Optional[int] = ..., sessions_dropped: _Optional[int] = ...) -> None: ...

class ReloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ReloadModelResponse(_message.Message):
    __slots__ = ("model", "previous_version", "sessions_dropped")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    previous_version: int
    sessions_dropped: int
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ..., previous_version: _Optional[int] = ..., sessions_dropped: _Optional[int] = ...) -> None: ...
