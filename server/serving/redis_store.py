"""Sessions in Redis: any worker of any replica continues any session, one at a time.

Keys, for a session id ``ID`` (all under ``rnnserve:``):

- ``s:ID`` a hash, the session record: ``model``, ``version``, ``pending`` (JSON number),
  ``tokens``, ``owner``, ``created``/``used`` (epoch seconds), and once a turn finished the state
  tensor as ``dtype`` (e.g. ``float32``), ``shape`` (JSON list) and ``state`` (raw bytes, CPU,
  C order). Its key expiry is the session TTL, refreshed by every turn: Redis expires idle
  sessions by itself.
- ``l:ID`` the lease: set-if-absent with an expiry (``SET NX PX``) by the request that runs the
  session, renewed while it runs (one renewal task per process renews every lease it holds), and
  released (or written back) only by its holder — a Lua script compares the holder's random
  token first. A second request finds the lease taken
  (ABORTED); a holder that died stops renewing, and the lease expires after ``session_lease_s``.
- ``k:ID`` a marker that outlives the record by a day, so that a missing record whose marker is
  still there reads "expired or evicted" rather than "unknown"; ``g:ID`` the reason of a
  deliberate removal (ended, unloaded), kept a day.

What changes against the memory store (docs/deploy.md): expiry and eviction by Redis's memory
policy cannot be told apart (``expired_or_evicted``); ``max_sessions`` is not enforced (size
Redis with ``maxmemory`` and ``volatile-lru``); unloading a model version removes its sessions
lazily, when one is next used (NOT_FOUND ``unloaded``), not at once; ``rnnserve_sessions_active``
and ``rnnserve_session_state_bytes`` are the memory store's (0 here), and
``rnnserve_session_store_sessions`` is the store-wide count (the same on every worker and
replica), refreshed at each sweep.

A turn costs two round trips: the acquire script (lease + record) and the release script (state,
TTL, lease). Each operation is bounded by ``OP_TIMEOUT_S`` (an ``asyncio.timeout`` around the
whole call rather than redis-py's ``socket_timeout``, which on Python 3.11 wraps every socket
write in a task of its own); redis-py cancels a timed-out command by dropping its connection.

Redis unreachable: every operation raises ``SessionStoreUnavailableError`` (UNAVAILABLE),
counts ``rnnserve_session_store_errors_total{kind}`` and sets ``rnnserve_session_store_up`` to 0
until an operation or the periodic check succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
import torch
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rnnserve.server.errors import (
    SessionBusyError,
    SessionGoneReason,
    SessionNotFoundError,
    SessionStoreUnavailableError,
)
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.sessions import Session, new_session_id
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
PREFIX = "rnnserve:"
INDEX = PREFIX + "index"  # sorted set: session id -> last use (epoch s), for the store-wide count
TOMBSTONE_MS = 24 * 3600 * 1000
OP_TIMEOUT_S = 2.0  # one operation (all its retries): past it, the store reads as unreachable

# KEYS: record, lease, marker, gone   ARGV: token, lease_ms, check owner ('1'/'0'), owner
# -> {status, fields...}: status 1 = held (fields = the record), 0 = busy, -1 = gone (reason);
# another client's session reads as unknown, as in the memory store
ACQUIRE = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1
   and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[4] then
  return {-1, 'unknown'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local reason = redis.call('GET', KEYS[4])
  if reason then return {-1, reason} end
  if redis.call('EXISTS', KEYS[3]) == 1 then return {-1, 'expired_or_evicted'} end
  return {-1, 'unknown'}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
return {1, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: record, lease, marker, index   ARGV: token, ttl_ms, marker_ms, now, id, field/value...
# -> 1 written (``used`` = now, and the fields given) and released, 0 the lease was no longer
# ours (nothing written)
RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'used', ARGV[4], unpack(ARGV, 6))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: record, lease, marker, gone, index   ARGV: token, reason ('' = none), id
REMOVE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[5], ARGV[3])
if ARGV[2] ~= '' then redis.call('SET', KEYS[4], ARGV[2], 'PX', 86400000) end
return 1
"""

# KEYS: record, lease   ARGV: token, lease_ms, ttl_ms  -> 1 renewed, 0 lost
RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def _keys(session_id: str) -> tuple[str, str, str, str]:
    return (f"{PREFIX}s:{session_id}", f"{PREFIX}l:{session_id}", f"{PREFIX}k:{session_id}",
            f"{PREFIX}g:{session_id}")


def redacted(url: str) -> str:
    """The URL without any user or password, for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def encode_state(state: torch.Tensor) -> dict[str, Any]:
    """A state tensor as record fields: dtype name, shape (JSON), raw CPU bytes (C order)."""
    cpu = on_cpu(state)
    return {**state_layout(cpu), "state": state_bytes(cpu)}


def state_layout(tensor: torch.Tensor) -> dict[str, str]:
    """The fields that say how to read a tensor's bytes: dtype name, shape (JSON list)."""
    return {"dtype": str(tensor.dtype)[len("torch."):], "shape": json.dumps(list(tensor.shape))}


# The codec runs on the event loop, between a turn's two round trips: few torch calls, through
# numpy where numpy has the dtype (bfloat16 goes through a uint8 view), and a record's dtype and
# shape parsed once per layout, not once per turn.
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64}


def on_cpu(state: torch.Tensor) -> torch.Tensor:
    """The tensor as a contiguous CPU tensor without autograd (itself when it already is one)."""
    if state.device.type == "cpu" and not state.requires_grad and state.is_contiguous():
        return state
    return state.detach().cpu().contiguous()


def state_bytes(cpu: torch.Tensor) -> bytes:
    """The raw bytes (C order) of a tensor that :func:`on_cpu` returned."""
    if cpu.dtype in _NUMPY_DTYPES:
        return cpu.numpy().tobytes()
    return cpu.view(torch.uint8).numpy().tobytes() if cpu.numel() else b""


@functools.lru_cache(maxsize=64)
def _layout(dtype: bytes, shape: bytes) -> tuple[torch.dtype, tuple[int, ...]]:
    return getattr(torch, dtype.decode()), tuple(json.loads(shape))


def decode_state(fields: dict[bytes, bytes]) -> torch.Tensor | None:
    """The state tensor of a record (on the CPU), or None when no turn has finished yet."""
    if b"state" not in fields:
        return None
    dtype, shape = _layout(fields[b"dtype"], fields[b"shape"])
    raw = fields[b"state"]
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).view(shape)  # a writable copy


def encode_pending(pending: int | float | torch.Tensor) -> dict[str, Any]:
    """The next step's input as record fields: a JSON number, or a tensor (``pending_*``)."""
    if isinstance(pending, torch.Tensor):
        return {"pending": "tensor", **{f"pending_{k}": v for k, v in encode_state(pending).items()}}
    return {"pending": json.dumps(pending)}


def decode_pending(fields: dict[bytes, bytes]) -> int | float | torch.Tensor:
    if fields[b"pending"] == b"tensor":
        prefix = b"pending_"
        tensor = decode_state({k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)})
        assert tensor is not None
        return tensor
    return json.loads(fields[b"pending"])


def _password(settings: ServerSettings) -> str | None:
    if settings.session_store_password_file is not None:
        lines = settings.session_store_password_file.read_text(encoding="utf-8").splitlines()
        return lines[0].strip() if lines else None
    return settings.session_store_password.get_secret_value() or None


class RedisSessionStore:
    """Sessions in Redis (see the module docstring for the keys and what changes)."""

    shared = True

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._url = settings.session_store
        self._where = redacted(self._url)
        self._ttl_ms = max(1, int(settings.session_ttl_s * 1000))
        self._lease_ms = max(1, int(settings.session_lease_s * 1000))
        self._marker_ms = self._ttl_ms + TOMBSTONE_MS
        # renew well inside both the lease and the TTL, so neither lapses while a turn runs
        self._renew_every = min(settings.session_lease_s, settings.session_ttl_s) / 3
        self._client: aioredis.Redis | None = None
        self._held: dict[str, str] = {}  # session id -> this process's lease token
        self._lost: set[str] = set()  # held ids whose lease ran out (not renewed any more)
        self._renewer: asyncio.Task[None] | None = None
        self._up = True
        self._scripts: dict[str, Any] = {}
        self._idle: list[AbstractConnection] = []  # redis-py connections free for _eval

    def __len__(self) -> int:
        return int(self._metrics.session_store_sessions._value.get())  # noqa: SLF001

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        # no socket_timeout: _call bounds each operation with OP_TIMEOUT_S instead
        self._client = aioredis.Redis.from_url(
            self._url, password=_password(self._settings), socket_connect_timeout=1.0,
            socket_timeout=None, retry=Retry(NoBackoff(), 1),
        )
        for name, body in (("acquire", ACQUIRE), ("release", RELEASE), ("remove", REMOVE),
                           ("renew", RENEW)):
            self._scripts[name] = self._client.register_script(body)
        try:
            await self._call("ping", self._client.ping())
            logger.info("session store: redis at %s", self._where)
        except SessionStoreUnavailableError:
            logger.warning("session store: redis at %s does not answer yet; session requests "
                           "are UNAVAILABLE until it does", self._where)
        self._renewer = asyncio.get_running_loop().create_task(self._renew_held())

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        self._held.clear()
        self._lost.clear()
        await self._drop_idle()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def up(self) -> bool:
        """Whether the last operation reached Redis."""
        return self._up

    # --- the interface -------------------------------------------------------------------------
    async def open(self, model: str, version: int, owner: str = "") -> Session:
        now = time.time()
        session = Session(id=new_session_id(), model=model, version=version,
                          created_at=now, last_used=now, busy=True, owner=owner)
        record, lease, marker, _ = _keys(session.id)
        token = secrets.token_hex(16)
        client = self._need()
        pipe = client.pipeline(transaction=True)
        pipe.hset(record, mapping={"model": model, "version": version, "pending": "0",
                                   "tokens": 0, "owner": owner, "created": now, "used": now})
        pipe.pexpire(record, self._ttl_ms)
        pipe.set(lease, token, px=self._lease_ms)
        pipe.set(marker, 1, px=self._marker_ms)
        pipe.zadd(INDEX, {session.id: now})
        await self._call("open", pipe.execute())
        self._hold(session.id, token)
        return session

    async def acquire(self, session_id: str, owner: str | None = None) -> Session:
        token = secrets.token_hex(16)
        check = ["1", owner] if owner is not None else ["0", ""]
        reply = await self._call("acquire", self._eval(
            "acquire", _keys(session_id), (token, self._lease_ms, *check)))
        status = int(reply[0])
        if status < 0:
            raise SessionNotFoundError(session_id, SessionGoneReason(reply[1].decode()))
        if status == 0:
            raise SessionBusyError(session_id)
        flat = reply[1]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        self._hold(session_id, token)
        return Session(
            id=session_id, model=fields[b"model"].decode(), version=int(fields[b"version"]),
            state=decode_state(fields), pending=decode_pending(fields),
            total_tokens=int(fields[b"tokens"]), created_at=float(fields[b"created"]),
            last_used=float(fields[b"used"]), busy=True, owner=fields[b"owner"].decode(),
        )

    async def release(self, session: Session, state: torch.Tensor | None = None,
                      pending: int | float | torch.Tensor | None = None,
                      added_tokens: int = 0) -> None:
        token = self._let_go(session.id)
        if token is None:
            return
        now = time.time()
        args: list[Any] = [token, self._ttl_ms, self._marker_ms, now, session.id]
        if state is not None and pending is not None:
            cpu = on_cpu(state)
            old = session.state
            if old is None or old.dtype != cpu.dtype or old.shape != cpu.shape:
                for key, value in state_layout(cpu).items():  # the record keeps them otherwise
                    args += [key, value]
            args += ["state", state_bytes(cpu), "tokens", session.total_tokens + added_tokens]
            for key, value in encode_pending(pending).items():
                args += [key, value]
        record, lease, marker, _ = _keys(session.id)
        written = await self._call("release", self._eval(
            "release", (record, lease, marker, INDEX), args))
        if not written:
            logger.warning("session %s: the lease ran out before the turn was written back; "
                           "the session keeps its previous state", session.id)

    async def discard(self, session: Session) -> None:
        await self._remove(session.id, "")

    async def end(self, session_id: str, owner: str | None = None) -> Session:
        session = await self.acquire(session_id, owner)
        await self._remove(session_id, SessionGoneReason.ENDED.value)
        self._removed(session, SessionGoneReason.ENDED)
        return session

    async def remove_unloaded(self, session: Session) -> None:
        await self._remove(session.id, SessionGoneReason.UNLOADED.value)
        self._removed(session, SessionGoneReason.UNLOADED)

    def drop_model_version(self, model: str, version: int) -> int:
        return 0  # other replicas may still serve that version: sessions go when next used

    async def sweep(self) -> int:
        """Check that Redis answers, and refresh the store-wide session count."""
        client = self._need()
        pipe = client.pipeline(transaction=False)
        pipe.zremrangebyscore(INDEX, "-inf", time.time() - self._settings.session_ttl_s)
        pipe.zcard(INDEX)
        _, count = await self._call("sweep", pipe.execute())
        self._metrics.session_store_sessions.set(count)
        return 0

    # --- helpers -------------------------------------------------------------------------------
    def _need(self) -> aioredis.Redis:
        if self._client is None:
            raise SessionStoreUnavailableError("the session store is not started")
        return self._client

    async def _call(self, op: str, pending: Awaitable[T]) -> T:
        """One round trip, timed and counted; Redis errors become UNAVAILABLE."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(OP_TIMEOUT_S):
                result = await pending
        except (RedisConnectionError, RedisTimeoutError, RedisError, OSError) as err:
            # TimeoutError (OP_TIMEOUT_S) is an OSError: tell it apart first
            kind = ("timeout" if isinstance(err, RedisTimeoutError | TimeoutError) else
                    "connection" if isinstance(err, RedisConnectionError | OSError)
                    else "response")
            self._metrics.session_store_errors.labels(kind).inc()
            if self._up:
                logger.error("session store: redis at %s failed (%s: %s)", self._where, kind,
                             type(err).__name__)
            self._set_up(False)
            raise SessionStoreUnavailableError(
                f"redis at {self._where} is unreachable: {kind}") from None
        self._metrics.child(self._metrics.session_store_duration, op).observe(
            time.perf_counter() - started)
        if not self._up:
            logger.info("session store: redis at %s answers again", self._where)
        self._set_up(True)
        return result

    async def _eval(self, name: str, keys: tuple[str, ...], args: Sequence[Any]) -> Any:
        """Run one of the Lua scripts (EVALSHA) on an idle connection of this store's own list.

        The connections are redis-py's, made by the client's pool (URL, password, TLS, connect
        timeout as configured), and redis-py connects them, packs the command and parses the
        reply; but a turn's two scripts skip the client's and the pool's per-command layers (retry
        wrapper, pool lock, observability hooks, event dispatch, response callbacks), which
        measured more CPU time than the rest of the store's work in a turn (docs/deploy.md). One
        event loop uses the list, so it needs no lock. redis-py drops a connection that failed or
        was cancelled mid-command (it reconnects when next used), so every connection goes back
        to the list. A dropped connection means Redis went away: every idle connection is dropped
        too, and the call is retried once. NOSCRIPT (a restarted Redis has lost its scripts) loads
        the script and runs it again. Errors: redis-py's ConnectionError and ResponseError.
        """
        script = self._scripts[name]
        for last in (False, True):
            conn = self._idle.pop() if self._idle else self._need().connection_pool.make_connection()
            try:
                try:
                    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_command("SCRIPT", "LOAD", script.script)
                    await conn.read_response()
                    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    return await conn.read_response()
            except RedisConnectionError:
                await self._drop_idle()
                if last:
                    raise
            finally:
                self._idle.append(conn)
        raise AssertionError("unreachable")

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.session_store_up.set(1 if up else 0)

    def _hold(self, session_id: str, token: str) -> None:
        self._held[session_id] = token

    def _let_go(self, session_id: str) -> str | None:
        self._lost.discard(session_id)
        return self._held.pop(session_id, None)

    async def _renew_held(self) -> None:
        """Every ``_renew_every`` seconds, renew the lease (and the record's TTL) of every session
        this process holds: a lease is renewed at most ``_renew_every`` after it was taken or last
        renewed, well inside ``session_lease_s``, with no task per turn."""
        record_ms = self._ttl_ms
        while True:
            await asyncio.sleep(self._renew_every)
            for session_id, token in list(self._held.items()):
                if session_id in self._lost:
                    continue
                record, lease, _, _ = _keys(session_id)
                try:
                    kept = await self._call("renew", self._eval(
                        "renew", (record, lease), (token, self._lease_ms, record_ms)))
                except SessionStoreUnavailableError:
                    break  # Redis is not answering: the next round tries them all again
                if not kept and self._held.get(session_id) == token:  # still that hold
                    self._lost.add(session_id)
                    logger.warning("session %s: lease lost while running", session_id)

    async def _remove(self, session_id: str, reason: str) -> bool:
        token = self._let_go(session_id)
        if token is None:
            return False
        record, lease, marker, gone = _keys(session_id)
        return bool(await self._call("remove", self._eval(
            "remove", (record, lease, marker, gone, INDEX), (token, reason, session_id))))

    def _removed(self, session: Session, reason: SessionGoneReason) -> None:
        m = self._metrics
        m.sessions_removed.labels(session.model, reason.value).inc()
        m.session_lifetime.labels(reason.value).observe(max(0.0, time.time() - session.created_at))

