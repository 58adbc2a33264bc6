"""rnnserve client library: a thin, typed client for the rnnserve gRPC API.

    from rnnserve.client import Client

    with Client("127.0.0.1:50051") as client:
        print(client.generate("time traveller", max_tokens=50).text)
        with client.session(temperature=0.8, seed=1) as session:
            session.generate("the time machine", max_tokens=20)
            session.generate(" and then", max_tokens=20)  # continues the same state
        print(client.classify(["a wonderful film", "dull and lifeless"]))
        print(client.forecast([0.0, 0.2, 0.39, 0.56], horizon=10).values)

:class:`AsyncClient` is the asyncio twin. Every failure raises a :class:`RnnserveError`
subclass; calls that fail with UNAVAILABLE are retried by gRPC with backoff.
"""

from ._async_client import AsyncClient
from ._client import Client
from ._exceptions import (
    AbortedError,
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RnnserveError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from ._session import AsyncSession, Session
from ._types import (
    Classification,
    Forecast,
    ForecastChunk,
    Generation,
    GenerationChunk,
    ModelInfo,
    TokenWeight,
)

__all__ = [
    "AbortedError",
    "AsyncClient",
    "AsyncSession",
    "CancelledError",
    "Classification",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "Forecast",
    "ForecastChunk",
    "Generation",
    "GenerationChunk",
    "InternalError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RnnserveError",
    "Session",
    "TokenWeight",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
]
