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

import hashlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from rnnserve.server.identity import set_current_client, token_identity
from rnnserve.server.rpc.handlers import handler_kind
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

    kind = handler_kind(handler)
    return handler._replace(**{kind: refuse})


def _with_identity(handler: grpc.RpcMethodHandler, identity: str) -> grpc.RpcMethodHandler:
    """``handler`` with the call's task bound to ``identity`` before the servicer runs.

    Each gRPC aio call runs in its own task (own context), so the binding needs no reset.
    """
    kind = handler_kind(handler)
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

