"""One log line per request (request id, method, model, status, duration), JSON by option."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from rnnserve.client import InvalidArgumentError
from rnnserve.server.logs import JsonFormatter

REQUEST_FIELDS = ("request_id", "method", "model", "status", "duration_ms")


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rnnserve.requests"]


async def test_each_request_logs_one_line_with_its_fields(server, aclient, caplog):
    caplog.set_level(logging.INFO, logger="rnnserve.requests")
    await aclient.generate("the time", max_tokens=5)
    with pytest.raises(InvalidArgumentError):
        await aclient.generate("", max_tokens=5)
    chunks = [c async for c in aclient.stream("the time", max_tokens=5)]
    assert chunks
    await aclient.classify(["a fine film"])

    records = request_records(caplog)
    seen = [(r.method, r.model, r.status) for r in records]
    assert seen == [
        ("Generate", "timemachine", "OK"),
        ("Generate", "timemachine", "INVALID_ARGUMENT"),
        ("GenerateStream", "timemachine", "OK"),
        ("Classify", "sentiment", "OK"),
    ]
    ids = [r.request_id for r in records]
    assert len(set(ids)) == len(ids) and all(ids)
    assert all(r.duration_ms >= 0 for r in records)


async def test_json_format_carries_the_request_fields(server, aclient, caplog):
    caplog.set_level(logging.INFO, logger="rnnserve.requests")
    await aclient.generate("the time", max_tokens=3)
    (record,) = request_records(caplog)
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("method", "model", "status")} == {
        "method": "Generate", "model": "timemachine", "status": "OK"}
    assert set(REQUEST_FIELDS) <= set(line) and line["level"] == "INFO"
    assert line["request_id"] in line["message"]


def test_json_format_keeps_exceptions_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None,
                                   exc_info=sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]
