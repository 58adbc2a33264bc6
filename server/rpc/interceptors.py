"""The server's interceptor chain, in order: bearer-token auth (``rpc/auth.py``), the default
deadline (``rpc/deadline.py``), then the lenient message parser (``rpc/wire.py``)."""

from __future__ import annotations

import logging

import grpc
from rnnserve.server.metrics import Metrics
from rnnserve.server.rpc.auth import AuthInterceptor, TokenSet, admin_tokens, data_tokens
from rnnserve.server.rpc.deadline import DeadlineInterceptor
from rnnserve.server.rpc.wire import WireInterceptor
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)


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
