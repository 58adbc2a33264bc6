from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ForecastRequest(_message.Message):
    __slots__ = ("model", "series", "horizon", "session_id", "keep_session")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_SESSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    series: _containers.RepeatedScalarFieldContainer[float]
    horizon: int
    session_id: str
    keep_session: bool
    def __init__(self, model: _Optional[str] = ..., series: _Optional[_Iterable[float]] = ..., horizon: _Optional[int] = ..., session_id: _Optional[str] = ..., keep_session: _Optional[bool] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("values", "session_id", "observed_points", "predicted_points", "model", "model_version")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_POINTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    session_id: str
    observed_points: int
    predicted_points: int
    model: str
    model_version: int
    def __init__(self, values: _Optional[_Iterable[float]] = ..., session_id: _Optional[str] = ..., observed_points: _Optional[int] = ..., predicted_points: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class ForecastStreamResponse(_message.Message):
    __slots__ = ("values", "session_id", "observed_points", "predicted_points", "model", "model_version", "done")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_POINTS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    session_id: str
    observed_points: int
    predicted_points: int
    model: str
    model_version: int
    done: bool
    def __init__(self, values: _Optional[_Iterable[float]] = ..., session_id: _Optional[str] = ..., observed_points: _Optional[int] = ..., predicted_points: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...
