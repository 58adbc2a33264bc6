"""Issue 9 F: the server's deadline ends a call whatever the client does, and a turn reported
as failed leaves its session as it was.

The zero-window client is written with raw HTTP/2 frames: it announces an initial window of 0
(SETTINGS_INITIAL_WINDOW_SIZE) and never sends a WINDOW_UPDATE, so the server can send headers
but not one byte of response data.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
from pathlib import Path

import pytest
from google.protobuf.message import Message
from rnnserve.client import AsyncClient
from rnnserve.server.calls import call_bound
from rnnserve.server.errors import DeadlineExceededError
from rnnserve.server.serving.requests import ForecastParams, GenerateParams
from rnnserve.v1 import classification_pb2, generation_pb2

_SINE = Path(__file__).resolve().parents[2] / "model_repository" / "sine" / "1"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK 'literal header field without indexing, new name' (no Huffman; short strings)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    head = await reader.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return head[3], head[4], stream, await reader.readexactly(length)


async def _zero_window_stream(port: int, request: Message, wait_s: float,
                              path: str = "/rnnserve.v1.GenerationService/GenerateStream"
                              ) -> list[tuple[int, int]]:
    """Open a call to ``path`` (default GenerateStream) that can never receive data; the
    (frame type, stream) seen."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    settings = struct.pack(">HI", 0x4, 0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
    headers = b"".join(_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"),
        (":path", path),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
        ("te", "trailers")))
    body = request.SerializeToString()
    message = b"\x00" + struct.pack(">I", len(body)) + body
    writer.write(PREFACE + _frame(SETTINGS, 0, 0, settings)
                 + _frame(HEADERS, END_HEADERS, 1, headers)
                 + _frame(DATA, END_STREAM, 1, message))
    await writer.drain()
    seen: list[tuple[int, int]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try:
        while loop.time() < deadline:
            try:
                kind, flags, stream, payload = await asyncio.wait_for(
                    _read_frame(reader), deadline - loop.time())
            except (TimeoutError, asyncio.IncompleteReadError):
                break
            seen.append((kind, stream))
            if kind == SETTINGS and not flags & ACK:
                writer.write(_frame(SETTINGS, ACK, 0, b""))
            elif kind == PING and not flags & ACK:
                writer.write(_frame(PING, ACK, 0, payload))
            if stream == 1 and (kind == RST_STREAM or (kind == HEADERS and flags & END_STREAM)):
                break  # the server ended the call
            await writer.drain()
    finally:
        writer.close()
    return seen


async def test_the_server_deadline_ends_a_call_the_client_never_reads(make_server, repo):
    server = await make_server(model_repository=repo, default_deadline_s=0.5)
    async with AsyncClient(server.target, retries=0) as client:
        opened = await client.generate("the time", max_tokens=3, keep_session=True)
        request = generation_pb2.GenerateRequest(session_id=opened.session_id, prefix=" m",
                                                 max_tokens=4096)
        seen = await _zero_window_stream(server.port, request, wait_s=3.0)
        assert (HEADERS, 1) in seen  # the call started; no data could be sent
        # the server gave up on the call: counted as DEADLINE_EXCEEDED, nothing in flight
        assert _count(server, "GenerateStream", "DEADLINE_EXCEEDED") == 1
        assert _in_flight(server) == 0
        # the session is free again, and unchanged by the turn that failed
        again = await client.generate(" machine", max_tokens=5, session_id=opened.session_id)
        whole = await client.generate("the time" + opened.text + " machine", max_tokens=5)
        assert again.text == whole.text


async def test_the_watchdog_drops_a_unary_call_stuck_in_its_write(make_server, repo, caplog):
    """A unary call whose answer cannot be written (a zero-window client) is dropped by the
    deadline watchdog, which holds the calls it watches weakly: a stuck call is still found."""
    server = await make_server(model_repository=repo, default_deadline_s=0.3)
    request = classification_pb2.ClassifyRequest(texts=["a fine film"])
    with caplog.at_level(logging.WARNING, logger="rnnserve.server.rpc.deadline"):
        seen = await _zero_window_stream(server.port, request, wait_s=3.0,
                                         path="/rnnserve.v1.ClassificationService/Classify")
    assert (HEADERS, 1) in seen  # the call was answered: headers, no data could follow
    assert any("still writing" in r.getMessage() and "dropping the call" in r.getMessage()
               for r in caplog.records)
    assert _in_flight(server) == 0


def _count(server, method: str, code: str) -> float:
    return sum(s.value for m in server.metrics.requests.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels["method"] == method
               and s.labels["code"] == code)


def _in_flight(server) -> float:
    return sum(s.value for m in server.metrics.in_flight.collect() for s in m.samples)


class _Expired:
    def expired(self) -> bool:
        return True


async def test_a_turn_past_its_deadline_at_commit_time_leaves_the_session_unchanged(
        make_server, repo):
    server = await make_server(model_repository=repo)
    async with AsyncClient(server.target, retries=0) as client:
        opened = await client.generate("the time", max_tokens=3, keep_session=True)
        session = server.sessions.memory._sessions[opened.session_id]  # the memory store's
        before = (session.state, session.pending, session.total_tokens)

        async def late_turn() -> None:
            call_bound.set(_Expired())  # the call's deadline passed while the turn ran
            params = GenerateParams(prefix=" traveller", max_tokens=20,
                                    session_id=opened.session_id)
            async for _ in server.generator.generate(params):
                pass

        with pytest.raises(DeadlineExceededError):
            await asyncio.create_task(late_turn())
        assert session.state is before[0]
        assert (session.pending, session.total_tokens) == before[1:]
        again = await client.generate(" machine", max_tokens=5, session_id=opened.session_id)
        whole = await client.generate("the time" + opened.text + " machine", max_tokens=5)
        assert again.text == whole.text


async def test_a_forecast_turn_past_its_deadline_leaves_the_session_unchanged(make_server, repo):
    """The same rule for every kind that keeps sessions: here the forecaster."""
    (repo / "sine").mkdir()
    shutil.copytree(_SINE, repo / "sine" / "1")
    server = await make_server(model_repository=repo)
    async with AsyncClient(server.target, retries=0) as client:
        series = [0.1 * i for i in range(12)]
        opened = await client.forecast(series[:8], 3, model="sine", keep_session=True)
        session = server.sessions.memory._sessions[opened.session_id]
        before = (session.state, session.pending, session.total_tokens)

        async def late_turn() -> None:
            call_bound.set(_Expired())
            params = ForecastParams(model="sine", series=tuple(series[8:]), horizon=5,
                                    session_id=opened.session_id)
            async for _ in server.forecasting.forecast(params):
                pass

        with pytest.raises(DeadlineExceededError):
            await asyncio.create_task(late_turn())
        assert session.state is before[0]
        assert session.pending is before[1] and session.total_tokens == before[2]
        again = await client.forecast(series[8:], 5, session_id=opened.session_id)
        whole = await client.forecast(series, 5, model="sine")
        assert again.values == whole.values
