"""The blocking client: one channel, a deadline on every call, typed errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    channel_options,
    sync_channel,
)
from ._exceptions import translate_errors
from ._session import Session
from ._types import (
    Classification,
    Forecast,
    ForecastChunk,
    Generation,
    GenerationChunk,
    ModelInfo,
)


class Client:
    """Blocking rnnserve client over one gRPC channel; use it as a context manager.

    Args:
        target: ``host:port`` of the server.
        timeout: default deadline in seconds for every call (``None``: no deadline);
            each method's ``timeout`` overrides it.
        credentials: ``grpc.ChannelCredentials`` for TLS (e.g.
            ``grpc.ssl_channel_credentials(ca)``); ``None`` for plaintext.
        metadata: sent with every call, e.g. ``{"authorization": "Bearer <token>"}``.
        retries: extra attempts on UNAVAILABLE (gRPC retry policy, exponential backoff).

    Every failure raises a :class:`~rnnserve.client.RnnserveError` subclass.
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
        self._channel = sync_channel(target, credentials, channel_options(retries))
        self._rpc = Stubs(self._channel)

    # ------------------------------------------------------------------ the one boundary

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        with translate_errors():
            return method(request, **self._settings.kwargs(timeout))

    def _server_stream(
        self, method: Callable[..., Any], request: Any, timeout: float | None
    ) -> Iterator[Any]:
        call = method(request, **self._settings.kwargs(timeout))
        try:
            with translate_errors():
                yield from call
        finally:
            call.cancel()  # no-op when finished; frees the call when the caller stops early

    # ------------------------------------------------------------------------ generation

    def generate(
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
        """Warm up on ``prefix`` and decode up to ``max_tokens`` characters (0: server default).

        ``temperature`` 0 is greedy; ``top_k``/``top_p``/``seed`` shape sampling; generation
        stops after any string in ``stop``. ``keep_session`` keeps the state (opening a session
        when ``session_id`` is empty); ``session_id`` continues one. The result's ``text`` is the
        continuation only.
        """
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
        response = self._unary(self._rpc.generation.Generate, request, timeout)
        return _convert.generation_from_pb(response)

    def stream(
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
    ) -> Iterator[GenerationChunk]:
        """Like :meth:`generate`, yielding chunks as the server produces them.

        The chunks' text concatenates to the unary text; the last carries ``finish_reason``.
        Errors raised mid-stream are typed too. Stopping early cancels the call.
        """
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
        for message in self._server_stream(self._rpc.generation.GenerateStream, request, timeout):
            yield _convert.chunk_from_pb(message)

    def end_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Drop a session; returns the characters it had seen. Unknown id: NotFoundError."""
        request = _convert.end_session_request(session_id)
        response = self._unary(self._rpc.generation.EndSession, request, timeout)
        return _convert.total_tokens_from_pb(response)

    def session(self, model: str = "", *, session_id: str = "", **decoding: Any) -> Session:
        """A :class:`Session` helper that opens on first use and ends on exit.

        ``decoding`` takes ``temperature``, ``top_k``, ``top_p``, ``seed`` and ``stop``;
        ``session_id`` adopts an already open session.
        """
        return Session(self, model, session_id, **decoding)

    # -------------------------------------------------------------------- classification

    def classify(
        self,
        texts: str | Sequence[str],
        *,
        model: str = "",
        explain: bool = False,
        timeout: float | None = None,
    ) -> list[Classification]:
        """Classify one text or many in one call; ``explain`` adds per-token weights."""
        request = _convert.classify_request(texts, model=model, explain=explain)
        response = self._unary(self._rpc.classification.Classify, request, timeout)
        return _convert.classifications_from_pb(response)

    # -------------------------------------------------------------------------- forecasting

    def forecast(
        self,
        series: Sequence[float],
        horizon: int,
        *,
        model: str = "",
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> Forecast:
        """Predict ``horizon`` points after ``series`` (seed 002's forecaster).

        From a zero state (or the session's state) the model runs over every point of
        ``series``; its last output is the first prediction, each prediction is fed back as the
        next input. ``keep_session`` keeps the state (opening a session when ``session_id`` is
        empty); ``session_id`` continues one, where ``series`` may be empty. End a session with
        :meth:`end_session`.
        """
        request = _convert.forecast_request(series, horizon, model=model,
                                            session_id=session_id, keep_session=keep_session)
        response = self._unary(self._rpc.forecast.Forecast, request, timeout)
        return _convert.forecast_from_pb(response)

    def forecast_stream(
        self,
        series: Sequence[float],
        horizon: int,
        *,
        model: str = "",
        session_id: str = "",
        keep_session: bool = False,
        timeout: float | None = None,
    ) -> Iterator[ForecastChunk]:
        """Like :meth:`forecast`, yielding predicted points as the server produces them."""
        request = _convert.forecast_request(series, horizon, model=model,
                                            session_id=session_id, keep_session=keep_session)
        for message in self._server_stream(self._rpc.forecast.ForecastStream, request, timeout):
            yield _convert.forecast_chunk_from_pb(message)

    # ---------------------------------------------------------------------------- models

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every model the server knows about, ready or not."""
        response = self._unary(self._rpc.models.ListModels, _convert.list_models_request(), timeout)
        return _convert.models_from_pb(response)

    def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """One model by name; unknown name: NotFoundError."""
        response = self._unary(self._rpc.models.GetModel, _convert.get_model_request(name), timeout)
        return _convert.get_model_from_pb(response)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The ``grpc.health.v1`` status, e.g. ``"SERVING"`` (``""``: the whole server)."""
        response = self._unary(self._rpc.health.Check, _convert.health_request(service), timeout)
        return _convert.health_from_pb(response)

    # ------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(target={self.target!r})"
