"""Bearer-token authentication for every call, as one server interceptor.

    authorization: Bearer <token>

Rules, in order:
- ``grpc.health.v1.Health`` is always open (load balancers and orchestrators probe it).
- ``rnnserve.v1.AdminService`` needs the admin token. A data token there is PERMISSION_DENIED
  (known client, wrong privilege); no token or an unknown one is UNAUTHENTICATED.
- Server reflection takes a data token or the admin token (grpcurl resolves admin methods
  through it), and is open when no data tokens are configured.
- Every other service needs a data token when data tokens are configured; the admin token is
  not a data token (PERMISSION_DENIED). With no data tokens configured, they are open.

Tokens are compared in constant time: the presented token and every known one are reduced to
SHA-256 digests (so lengths leak nothing) and compared with :func:`hmac.compare_digest`, over
all known tokens without an early exit. An accepted data token binds the call's task to the
token's identity (:mod:`rnnserve.server.identity`), which per-client limits use.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from rnnserve.server.identity import set_current_client, token_identity
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc.status import SERVER_DEADLINE
from rnnserve.server.rpc.wire import WireInterceptor
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

AUTH_KEY = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
ADMIN_PREFIX = "/rnnserve.v1.AdminService/"
REFLECTION_PREFIX = "/grpc.reflection."


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def read_token_file(path: Path) -> list[str]:
    """Tokens of a file: one per line; blank lines and lines starting with '#' are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class TokenSet:
    """Known tokens, as digests, each with the identity it stands for."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._known = [(_digest(t), token_identity(t)) for t in dict.fromkeys(tokens) if t]

    def __bool__(self) -> bool:
        return bool(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def identify(self, token: str) -> str | None:
        """The identity of ``token``, or None; the time taken does not depend on which matched."""
        presented = _digest(token)
        found: str | None = None
        for digest, identity in self._known:
            if hmac.compare_digest(presented, digest):
                found = identity
        return found


def data_tokens(settings: ServerSettings) -> TokenSet:
    """The data-plane tokens: the file's lines plus the comma separated setting."""
    tokens = [t.strip() for t in settings.auth_tokens.get_secret_value().split(",")]
    if settings.auth_tokens_file is not None:
        tokens += read_token_file(settings.auth_tokens_file)
    return TokenSet(t for t in tokens if t)


def admin_tokens(settings: ServerSettings) -> TokenSet:
    """The admin token (the file's first token wins over the setting)."""
    if settings.admin_token_file is not None:
        tokens = read_token_file(settings.admin_token_file)[:1]
        if not tokens:
            raise ValueError(f"{settings.admin_token_file}: no admin token in the file")
        return TokenSet(tokens)
    return TokenSet([settings.admin_token.get_secret_value()])


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if there is one."""
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token of every call (see the module docstring for the rules)."""

    def __init__(self, data: TokenSet, admin: TokenSet) -> None:
        self._data = data
        self._admin = admin

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        refusal, identity = self._decide(method, token)
        if refusal is not None:
            logger.warning("refused %s: %s", method, refusal[1])
            return _refusing(handler, *refusal)
        return _with_identity(handler, identity) if identity else handler

    def _decide(self, method: str, token: str | None
                ) -> tuple[tuple[grpc.StatusCode, str] | None, str]:
        unauthenticated = grpc.StatusCode.UNAUTHENTICATED
        if method.startswith(ADMIN_PREFIX):
            if token is None:
                return (unauthenticated, "missing bearer token (admin token required)"), ""
            if self._admin.identify(token) is not None:
                return None, "admin"
            if self._data.identify(token) is not None:
                return (grpc.StatusCode.PERMISSION_DENIED,
                        "admin calls need the admin token, not a data token"), ""
            return (unauthenticated, "invalid bearer token"), ""
        if not self._data:
            return None, ""
        if token is None:
            return (unauthenticated, "missing bearer token ('authorization: Bearer <token>')"), ""
        identity = self._data.identify(token)
        if identity is not None:
            return None, identity
        if self._admin and self._admin.identify(token) is not None:
            if method.startswith(REFLECTION_PREFIX):
                return None, ""
            return (grpc.StatusCode.PERMISSION_DENIED,
                    "the admin token is only for AdminService calls"), ""
        return (unauthenticated, "invalid bearer token"), ""


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
              ) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with ``code``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kind = _kind(handler)
    return handler._replace(**{kind: refuse})


def _with_identity(handler: grpc.RpcMethodHandler, identity: str) -> grpc.RpcMethodHandler:
    """``handler`` with the call's task bound to ``identity`` before the servicer runs.

    Each gRPC aio call runs in its own task (own context), so the binding needs no reset.
    """
    kind = _kind(handler)
    inner = getattr(handler, kind)
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
            set_current_client(identity)
            async for item in inner(request, context):
                yield item

        return handler._replace(**{kind: streaming})

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        set_current_client(identity)
        return await inner(request, context)

    return handler._replace(**{kind: call})


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "stream_stream" if handler.response_streaming else "stream_unary"
    return "unary_stream" if handler.response_streaming else "unary_unary"


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    """Bounds every unary and server-streaming call that brings no deadline of its own.

    Past the bound the call ends with DEADLINE_EXCEEDED, and its work is dropped at the next
    step as for a client's own deadline. Health (``Watch`` is meant to be long-lived) is exempt.
    """

    def __init__(self, default_s: float) -> None:
        self._default_s = default_s

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or \
                handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        return _bounded(handler, self._default_s)


def _deadline_message(seconds: float) -> str:
    return (f"the server's default deadline of {seconds:g}s passed "
            "(send a deadline with the call to choose another)")


class _StreamBound:
    """The default deadline of one streaming call (``expired()`` as on ``asyncio.Timeout``)."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self._task = task
        self.waiting = False
        self._expired = False
        self.closing: asyncio.Future[None] | None = None  # the handler's close, once stuck

    def expired(self) -> bool:
        return self._expired

    def fire(self) -> None:
        self._expired = True
        if self.waiting and self._task is not None:
            self._task.cancel()

    def uncancel(self) -> None:
        if self._task is not None:
            self._task.uncancel()


WRITE_GRACE_S = 1.0
"""How long past the default deadline a call may still be writing before its task is cancelled
(a client that never reads, e.g. one announcing a zero HTTP/2 window)."""


def _watchdog(seconds: float, close: Callable[[], None] | None = None) -> None:
    """Cancel the current call's task if it is still running ``seconds`` from now.

    The deadline itself is enforced where the handler waits (see ``_bounded``); a call can
    still be stuck past it inside gRPC's own write, which only a client that reads can finish
    (one that announces a zero HTTP/2 window never does). ``close`` first closes the handler's
    messages, so that its cleanup runs at once: the turn is dropped and its session released
    unchanged, and the call is logged and counted as DEADLINE_EXCEEDED. What gRPC's asyncio
    server cannot do is send that client a status or reset the stream: a status waits behind
    the unsent message, and no API cancels a server call. The stream (with the one message it
    holds) stays until the client reads or goes away; ``max_concurrent_streams`` bounds how
    many one connection can hold (docs/security.md).
    """
    task = asyncio.current_task()
    if task is None:
        return

    def fire() -> None:
        if task.done():
            return
        logger.warning("%s: still writing %.1fs past the server's deadline (the client does "
                       "not read); dropping the call", task.get_name(), WRITE_GRACE_S)
        if close is not None:
            close()
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, fire)
    task.add_done_callback(lambda _: timer.cancel())


def _bounded(handler: grpc.RpcMethodHandler, seconds: float) -> grpc.RpcMethodHandler:
    kind = _kind(handler)
    inner = getattr(handler, kind)
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[Any]:
            if context.time_remaining() is not None:
                async for item in inner(request, context):
                    yield item
                return
            # One timer per call. It cancels the handler only while it waits for the next
            # message, never at a ``yield``: a cancel landing at a yield would hit gRPC's own
            # write, outside this try, and the call would hang. A bound that passes during a
            # write is seen as soon as the write returns.
            bound = _StreamBound(asyncio.current_task())
            SERVER_DEADLINE.set(bound)
            timer = asyncio.get_running_loop().call_later(seconds, bound.fire)
            messages = inner(request, context)

            def close() -> None:  # the handler is suspended at a yield: closing it is safe
                if not bound.waiting:
                    bound.closing = asyncio.ensure_future(messages.aclose())

            _watchdog(seconds + WRITE_GRACE_S, close)
            try:
                while not bound.expired():
                    bound.waiting = True
                    try:
                        item = await anext(messages)
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if not bound.expired():
                            raise
                        bound.uncancel()
                        break
                    finally:
                        bound.waiting = False
                    yield item
                await context.abort(code, _deadline_message(seconds))
            finally:
                timer.cancel()
                await messages.aclose()

        return handler._replace(**{kind: streaming})

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if context.time_remaining() is not None:
            return await inner(request, context)
        _watchdog(seconds + WRITE_GRACE_S)
        try:
            async with asyncio.timeout(seconds) as bound:
                SERVER_DEADLINE.set(bound)
                return await inner(request, context)
        except TimeoutError:
            await context.abort(code, _deadline_message(seconds))

    return handler._replace(**{kind: call})


def build_interceptors(settings: ServerSettings, metrics: Metrics
                       ) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors the settings ask for: auth first (a refused call costs nothing more),
    the message parser last (it wraps the servicer itself, see ``rpc/wire.py``)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    data = data_tokens(settings)
    admin = admin_tokens(settings) if settings.admin_enabled else TokenSet([])
    if data or admin:
        logger.info("bearer-token auth: %d data token(s)%s", len(data),
                    ", admin token set" if admin else "")
        interceptors.append(AuthInterceptor(data, admin))
    if settings.default_deadline_s > 0:
        interceptors.append(DeadlineInterceptor(settings.default_deadline_s))
    interceptors.append(WireInterceptor(metrics))
    return interceptors
