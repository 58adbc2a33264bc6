"""The asyncio client: the ``grpc.aio`` twin of :class:`~rnnserve.client.Client`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

import grpc

from . import _convert
from ._channel import (
    DEFAULT_RETRIES,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    CallSettings,
    Metadata,
    Stubs,
    aio_channel,
    channel_options,
)
from ._exceptions import translate_errors
from ._session import AsyncSession
from ._types import (
    Classification,
    Forecast,
    ForecastChunk,
    Generation,
    GenerationChunk,
    ModelInfo,
)


class AsyncClient:
    """Asyncio rnnserve client over one ``grpc.aio`` channel; use it with ``async with``.

    Same arguments and methods as :class:`~rnnserve.client.Client`, as coroutines
    (``stream`` is an async iterator). The channel opens on the first call, in the
    event loop that makes it; use one client from one loop.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.target = target
        self._settings = CallSettings.build(timeout, metadata)
        options = channel_options(retries)  # validates now, though the channel opens later
        self._open_channel = functools.partial(aio_channel, target, credentials, options)
        self._channel: grpc.aio.Channel | None = None
        self._stubs: Stubs | None = None

    @property
    def _rpc(self) -> Stubs:
        """The stubs; the channel opens on first use, so it binds to the loop that uses it."""
        if self._stubs is None:
            self._channel = self._open_channel()
            self._stubs = Stubs(self._channel)
        return self._stubs

    # ------------------------------------------------------------------ the one boundary

    async def _unary(
        self, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> Any:
        with translate_errors():
            return await method(request, **self._settings.kwargs(timeout))

    async def _server_stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> AsyncIterator[Any]:
        call = method(request, **self._settings.kwargs(timeout))
        try:
            with translate_errors():
                async for message in call:
                    yield message
        finally:
            call.cancel()  # no-op when finished; frees the call when the caller stops early

    # ------------------------------------------------------------------------ generation

    async def generate(
        self,
        prefix: str,
        *,
        model: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int = 0,
        stop: str | Sequence[str] = (),
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> Generation:
        """See :meth:`Client.generate <rnnserve.client.Client.generate>`."""
        request = _convert.generate_request(
            prefix,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            session_id=session_id,
            keep_session=keep_session,
        )
        response = await self._unary(self._rpc.generation.Generate, request, timeout)
        return _convert.generation_from_pb(response)

    async def stream(
        self,
        prefix: str,
        *,
        model: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int = 0,
        stop: str | Sequence[str] = (),
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """See :meth:`Client.stream <rnnserve.client.Client.stream>` (``async for``)."""
        request = _convert.generate_request(
            prefix,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            session_id=session_id,
            keep_session=keep_session,
        )
        messages = self._server_stream(self._rpc.generation.GenerateStream, request, timeout)
        async with contextlib.aclosing(messages):  # cancel the call as soon as we stop
            async for message in messages:
                yield _convert.chunk_from_pb(message)

    async def end_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """See :meth:`Client.end_session <rnnserve.client.Client.end_session>`."""
        request = _convert.end_session_request(session_id)
        response = await self._unary(self._rpc.generation.EndSession, request, timeout)
        return _convert.total_tokens_from_pb(response)

    def session(self, model: str = "", *, session_id: str = "", **decoding: Any) -> AsyncSession:
        """An :class:`AsyncSession` helper that opens on first use and ends on exit."""
        return AsyncSession(self, model, session_id, **decoding)

    # -------------------------------------------------------------------- classification

    async def classify(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "",
        explain: bool = False,
        timeout: float | None = None,
    ) -> list[Classification]:
        """See :meth:`Client.classify <rnnserve.client.Client.classify>`."""
        request = _convert.classify_request(texts, model=model, explain=explain)
        response = await self._unary(self._rpc.classification.Classify, request, timeout)
        return _convert.classifications_from_pb(response)

    # -------------------------------------------------------------------------- forecasting

    async def forecast(
        self,
        series: Sequence[float],
        horizon: int,
        *,
        model: str = "",
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> Forecast:
        """See :meth:`Client.forecast <rnnserve.client.Client.forecast>`."""
        request = _convert.forecast_request(series, horizon, model=model,
                                            session_id=session_id, keep_session=keep_session)
        response = await self._unary(self._rpc.forecast.Forecast, request, timeout)
        return _convert.forecast_from_pb(response)

    async def forecast_stream(
        self,
        series: Sequence[float],
        horizon: int,
        *,
        model: str = "",
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[ForecastChunk]:
        """See :meth:`Client.forecast_stream <rnnserve.client.Client.forecast_stream>`."""
        request = _convert.forecast_request(series, horizon, model=model,
                                            session_id=session_id, keep_session=keep_session)
        async for message in self._server_stream(self._rpc.forecast.ForecastStream, request,
                                                 timeout):
            yield _convert.forecast_chunk_from_pb(message)

    # ---------------------------------------------------------------------------- models

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server knows about, ready or not."""
        request = _convert.list_models_request()
        response = await self._unary(self._rpc.models.ListModels, request, timeout)
        return _convert.models_from_pb(response)

    async def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """One model by name; unknown name: NotFoundError."""
        request = _convert.get_model_request(name)
        response = await self._unary(self._rpc.models.GetModel, request, timeout)
        return _convert.get_model_from_pb(response)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The ``grpc.health.v1`` status, e.g. ``"SERVING"`` (``""``: the whole server)."""
        request = _convert.health_request(service)
        response = await self._unary(self._rpc.health.Check, request, timeout)
        return _convert.health_from_pb(response)

    # ------------------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(target={self.target!r})"
