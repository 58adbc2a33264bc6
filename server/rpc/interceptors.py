"""The server's interceptor chain: bearer-token auth (``rpc/auth.py``) when tokens are set.

The default deadline (``rpc/deadline.py``) and the lenient message parser (``rpc/wire.py``)
depend only on the method, so they wrap each method's handler once, at registration
(``rpc/registration.py``), and run inside auth.
"""

from __future__ import annotations

import logging

import grpc
from rnnserve.server.rpc.auth import AuthInterceptor, TokenSet, admin_tokens, data_tokens
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)


def build_interceptors(settings: ServerSettings) -> list[grpc.aio.ServerInterceptor]:
    """The interceptors the settings ask for: auth, when any token is configured (a refused
    call costs nothing more)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    data = data_tokens(settings)
    admin = admin_tokens(settings) if settings.admin_enabled else TokenSet([])
    if data or admin:
        logger.info("bearer-token auth: %d data token(s)%s", len(data),
                    ", admin token set" if admin else "")
        interceptors.append(AuthInterceptor(data, admin))
    return interceptors
