"""DESIGN semantics 5: bad input gets a clear status naming the field, and nothing else is disturbed.

The table walks every row of the error contract with the real client against one server with
small limits; after each row the server must still answer a normal Generate and report SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from rnnserve.client import (
    AsyncClient,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RnnserveError,
    UnavailableError,
)
from rnnserve.v1 import generation_pb2

ROOT = Path(__file__).resolve().parents[2]
TIMEMACHINE = ROOT / "model_repository" / "timemachine"

LIMITS = dict(max_prefix_chars=10, max_tokens_limit=50, max_stop_strings=2, max_stop_chars=5,
              max_texts_per_call=3, max_text_chars=20)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

Call = Callable[[AsyncClient], Awaitable[object]]
TYPED = {INVALID: InvalidArgumentError, NOT_FOUND: NotFoundError}


@dataclass(frozen=True)
class Row:
    name: str
    call: Call
    code: grpc.StatusCode
    mentions: tuple[str, ...]  # strings the details must contain (the field, the culprit)


async def drain(stream) -> None:
    async for _ in stream:
        pass


def gen(prefix: str = "time", **kwargs) -> Call:
    kwargs.setdefault("max_tokens", 5)
    return lambda c: c.generate(prefix, **kwargs)


def stream(prefix: str = "time", **kwargs) -> Call:
    kwargs.setdefault("max_tokens", 5)
    return lambda c: drain(c.stream(prefix, **kwargs))


def classify(texts, **kwargs) -> Call:
    return lambda c: c.classify(texts, **kwargs)


ROWS = [
    Row("empty prefix without a session", gen(""), INVALID, ("prefix",)),
    Row("empty prefix without a session (stream)", stream(""), INVALID, ("prefix",)),
    Row("negative temperature", gen(temperature=-0.5), INVALID, ("temperature",)),
    Row("NaN temperature", gen(temperature=math.nan), INVALID, ("temperature",)),
    Row("infinite temperature", gen(temperature=math.inf), INVALID, ("temperature",)),
    Row("temperature too big", gen(temperature=1000.0), INVALID, ("temperature",)),
    Row("top_p above 1", gen(temperature=1.0, top_p=1.5), INVALID, ("top_p",)),
    Row("negative top_p", gen(temperature=1.0, top_p=-0.1), INVALID, ("top_p",)),
    Row("NaN top_p", gen(temperature=1.0, top_p=math.nan), INVALID, ("top_p",)),
    Row("top_k without temperature", gen(top_k=5), INVALID, ("temperature", "top_k")),
    Row("top_p without temperature", gen(top_p=0.5), INVALID, ("temperature", "top_p")),
    Row("prefix over max_prefix_chars", gen("x" * 11), INVALID, ("prefix", "10")),
    Row("prefix over the limit in a session", gen("y" * 11, session_id="whatever"), INVALID,
        ("prefix",)),
    Row("max_tokens past the limit", gen(max_tokens=51), INVALID, ("max_tokens", "50")),
    Row("max_tokens past the limit (stream)", stream(max_tokens=51), INVALID, ("max_tokens",)),
    Row("empty stop string", gen(stop=["ab", ""]), INVALID, ("stop",)),
    Row("too many stop strings", gen(stop=["a", "b", "c"]), INVALID, ("stop",)),
    Row("stop string too long", gen(stop=["abcdef"]), INVALID, ("stop",)),
    Row("Classify with no texts", classify([]), INVALID, ("texts",)),
    Row("Classify with an empty text", classify(["fine", ""]), INVALID, ("texts[1]",)),
    Row("Classify with a blank text", classify(["fine", "ok", "  \n"]), INVALID, ("texts[2]",)),
    Row("Classify with too many texts", classify(["a", "b", "c", "d"]), INVALID,
        ("texts", "3")),
    Row("Classify with a text too long", classify(["z" * 21]), INVALID, ("texts[0]", "20")),
    Row("unknown generation model", gen(model="no-such-model"), NOT_FOUND, ("no-such-model",)),
    Row("unknown generation model (stream)", stream(model="nope"), NOT_FOUND, ("nope",)),
    Row("unknown classifier", classify(["good"], model="no-such-clf"), NOT_FOUND,
        ("no-such-clf",)),
    Row("path-like model name", gen(model="../timemachine"), NOT_FOUND, ("../timemachine",)),
    Row("classifier used for Generate", gen(model="sentiment"), INVALID, ("model", "sentiment")),
    Row("char model used for Classify", classify(["good"], model="timemachine"), INVALID,
        ("model", "timemachine")),
    Row("keep_session with an unknown model", gen(model="ghost", keep_session=True), NOT_FOUND,
        ("ghost",)),
    Row("keep_session with a bad option", gen(keep_session=True, temperature=-1.0), INVALID,
        ("temperature",)),
    Row("unknown session", gen(session_id="not-a-session"), NOT_FOUND,
        ("session_id", "not-a-session")),
    Row("unknown session, empty prefix", gen("", session_id="zzz"), NOT_FOUND, ("session_id",)),
    Row("EndSession of an unknown session", lambda c: c.end_session("nobody"), NOT_FOUND,
        ("nobody",)),
    Row("EndSession without an id", lambda c: c.end_session(""), INVALID, ("session_id",)),
    Row("GetModel of an unknown model", lambda c: c.get_model("ghost"), NOT_FOUND, ("ghost",)),
    Row("GetModel without a name", lambda c: c.get_model(""), INVALID, ("name",)),
]


async def assert_healthy(client: AsyncClient) -> None:
    result = await client.generate("time", max_tokens=3)
    assert result.generated_tokens == 3
    assert await client.health() == "SERVING"


async def test_error_table(make_server, connect):
    server = await make_server(**LIMITS)
    failures = []
    async with connect(server) as client:
        for row in ROWS:
            try:
                with pytest.raises(RnnserveError) as info:
                    await row.call(client)
                err = info.value
                assert err.code == row.code, f"got {err.code.name}: {err.details}"
                assert isinstance(err, TYPED[row.code]), type(err)
                for word in row.mentions:
                    assert word in err.details, f"{word!r} not in {err.details!r}"
                assert "Traceback" not in err.details
                await assert_healthy(client)
            except AssertionError as exc:  # report every broken row, not just the first
                failures.append(f"{row.name}: {exc}")
    assert not failures, "\n".join(failures)


async def test_rejected_requests_are_counted_by_status(make_server, connect, metrics_of):
    server = await make_server(**LIMITS)
    async with connect(server) as client:
        for row in ROWS:
            with contextlib.suppress(RnnserveError):
                await row.call(client)
    view = await metrics_of(server)
    invalid = sum(v for _, v in view.matching("rnnserve_requests_total", code="INVALID_ARGUMENT"))
    not_found = sum(v for _, v in view.matching("rnnserve_requests_total", code="NOT_FOUND"))
    assert invalid == sum(r.code == INVALID for r in ROWS)
    assert not_found == sum(r.code == NOT_FOUND for r in ROWS)
    assert not view.matching("rnnserve_requests_total", code="INTERNAL")
    # no failed request left a session behind
    assert view.value("rnnserve_sessions_active", model="timemachine") == 0


# --------------------------------------------------------------------- RESOURCE_EXHAUSTED
async def test_admission_limit_gives_resource_exhausted(make_server, connect):
    server = await make_server(max_active_generations=1, max_tokens_limit=100_000)
    async with connect(server) as client:
        long = client.stream("the time traveller", max_tokens=100_000)
        async with contextlib.aclosing(long):
            await anext(long)  # the one allowed generation is running
            with pytest.raises(ResourceExhaustedError) as info:
                await client.generate("time", max_tokens=5)
            assert "timemachine" in info.value.details
            with pytest.raises(ResourceExhaustedError):
                await drain(client.stream("time", max_tokens=5))
            with pytest.raises(ResourceExhaustedError):  # and no session is left behind
                await client.generate("time", max_tokens=5, keep_session=True)
            assert len(server.sessions) == 0
            assert await client.health() == "SERVING"
        # the long stream was cancelled; its slot comes back
        for _ in range(200):
            try:
                result = await client.generate("time", max_tokens=5)
                break
            except ResourceExhaustedError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("the cancelled stream never gave its slot back")
        assert result.generated_tokens == 5


async def test_session_cap_with_every_session_busy_is_resource_exhausted(make_server, connect):
    server = await make_server(max_sessions=1, max_tokens_limit=100_000)
    async with connect(server) as client:
        busy = client.stream("the time", max_tokens=100_000, keep_session=True)
        async with contextlib.aclosing(busy):
            await anext(busy)
            with pytest.raises(ResourceExhaustedError) as info:
                await client.generate("time", max_tokens=5, keep_session=True)
            assert "keep_session" in info.value.details
            # a stateless request is not affected by the session cap
            assert (await client.generate("time", max_tokens=5)).generated_tokens == 5


# -------------------------------------------------------------------------- UNAVAILABLE
@pytest.fixture
def repo_with_a_broken_model(tmp_path: Path) -> Path:
    """timemachine (copied) plus 'broken', a copy whose weights file is truncated."""
    repo = tmp_path / "repo"
    shutil.copytree(TIMEMACHINE, repo / "timemachine")
    broken = repo / "broken" / "1"
    shutil.copytree(TIMEMACHINE / "1", broken)
    config = (broken / "config.json").read_text(encoding="utf-8")
    (broken / "config.json").write_text(config.replace('"timemachine"', '"broken"', 1),
                                        encoding="utf-8")
    weights = (broken / "model.pt").read_bytes()
    (broken / "model.pt").write_bytes(weights[: len(weights) // 3])
    return repo


async def test_a_model_that_failed_to_load_is_unavailable(make_server, connect,
                                                          repo_with_a_broken_model, metrics_of):
    server = await make_server(model_repository=repo_with_a_broken_model)
    async with connect(server) as client:
        models = {m.name: m for m in await client.list_models()}
        assert set(models) == {"broken", "timemachine"}
        assert models["broken"].state == "failed"
        assert "model.pt" in models["broken"].error
        assert "truncated" in models["broken"].error or "unreadable" in models["broken"].error
        assert models["timemachine"].state == "ready" and models["timemachine"].is_default
        assert not models["broken"].is_default
        assert (await client.get_model("broken")).state == "failed"

        with pytest.raises(UnavailableError) as info:
            await client.generate("time", model="broken", max_tokens=5)
        assert "broken" in info.value.details and "failed" in info.value.details
        with pytest.raises(UnavailableError):
            await drain(client.stream("time", model="broken", max_tokens=5))

        # the good one still serves, and so does the server as a whole
        ok = await client.generate("time", max_tokens=5)
        assert ok.model == "timemachine"
        assert await client.health() == "SERVING"
        assert await client.health("rnnserve.v1.GenerationService") == "SERVING"
        assert await client.health("rnnserve.v1.ModelService") == "SERVING"
        # no classifier in this repository: its service says so
        assert await client.health("rnnserve.v1.ClassificationService") == "NOT_SERVING"
    view = await metrics_of(server)
    assert view.value("rnnserve_model_ready", model="broken") == 0
    assert view.value("rnnserve_model_ready", model="timemachine") == 1


async def test_the_client_retries_unavailable_then_reports_it(make_server, metrics_of,
                                                              repo_with_a_broken_model):
    server = await make_server(model_repository=repo_with_a_broken_model)
    async with AsyncClient(server.target, retries=2, timeout=10) as client:
        with pytest.raises(UnavailableError):
            await client.generate("time", model="broken", max_tokens=5)
    view = await metrics_of(server)
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model="broken",
                      code="UNAVAILABLE") == 3  # the first attempt and two retries


# ----------------------------------------------------------------------------- INTERNAL
class Boom(Exception):
    pass


SECRET = "secret-detail /etc/shadow 0xdeadbeef"


async def test_internal_errors_carry_a_request_id_and_no_traceback(server, connect, metrics_of):
    async def exploding_classify(*args, **kwargs):
        raise Boom(SECRET)

    def exploding_validate(params):
        raise Boom(SECRET)

    server.classifier.classify = exploding_classify
    server.generator.validate = exploding_validate

    async with connect(server, metadata={"x-request-id": "e2e-req-42"}) as client:
        calls = [lambda: client.classify(["good"]), lambda: client.generate("time"),
                 lambda: drain(client.stream("time"))]
        for call in calls:
            with pytest.raises(InternalError) as info:
                await call()
            details = info.value.details
            assert "request id" in details
            assert "e2e-req-42" in details  # the client's own request id is echoed
            for leak in ("Traceback", SECRET, "Boom", "File \"", ".py"):
                assert leak not in details, leak
    async with connect(server) as client:
        with pytest.raises(InternalError) as info:
            await client.generate("time")
        assert "request id" in info.value.details
        del server.generator.validate  # back to the class's method
        assert (await client.generate("time", max_tokens=4)).generated_tokens == 4
        assert await client.health() == "SERVING"
    view = await metrics_of(server)
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Classify", model="sentiment",
                      code="INTERNAL") == 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model="timemachine",
                      code="INTERNAL") == 2


async def test_a_request_that_is_not_valid_protobuf_is_refused_cleanly(server, aclient):
    """Wire level: a string field holding invalid UTF-8 must not crash or leak anything."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        raw = channel.unary_unary("/rnnserve.v1.GenerationService/Generate")
        good = generation_pb2.GenerateRequest(prefix="ab", max_tokens=3).SerializeToString()
        bad = good.replace(b"ab", b"\xff\xfe")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(bad, timeout=10)
        assert info.value.code() != grpc.StatusCode.OK
        assert "Traceback" not in (info.value.details() or "")
        reply = generation_pb2.GenerateResponse.FromString(await raw(good, timeout=10))
        assert reply.generated_tokens == 3
    await assert_healthy(aclient)


async def test_one_failing_generation_does_not_fail_its_batch_mates(server, connect, monkeypatch):
    from rnnserve.server.execution import decoding

    real_sample = decoding.sample

    def sample(logits, options, seeds, draws):
        if any(o.seed == 666 for o in options):
            raise Boom(SECRET)
        return real_sample(logits, options, seeds, draws)

    monkeypatch.setattr(decoding, "sample", sample)
    async with connect(server) as client:
        expected = (await client.generate("the time traveller", max_tokens=3000)).text
        first = asyncio.Event()

        async def bystander() -> str:
            text = ""
            async for chunk in client.stream("the time traveller", max_tokens=3000):
                text += chunk.text
                first.set()
            return text

        running = asyncio.create_task(bystander())
        await asyncio.wait_for(first.wait(), 10)
        with pytest.raises(InternalError):
            await client.generate("time", max_tokens=50, temperature=1.0, seed=666)
        assert await asyncio.wait_for(running, 30) == expected


class _Payload:
    """Unpickling this creates a marker file: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


async def test_a_repository_full_of_bad_entries_serves_the_good_model(make_server, connect,
                                                                       tmp_path):
    import torch

    repo = tmp_path / "repo"
    shutil.copytree(TIMEMACHINE, repo / "timemachine")

    def variant(name: str) -> Path:
        vdir = repo / name / "1"
        shutil.copytree(TIMEMACHINE / "1", vdir)
        config = (vdir / "config.json").read_text(encoding="utf-8")
        (vdir / "config.json").write_text(config.replace('"timemachine"', f'"{name}"', 1),
                                          encoding="utf-8")
        return vdir

    marker = tmp_path / "pwned"
    torch.save({"rnn.weight_ih_l0": _Payload(marker)}, variant("pickled") / "model.pt")
    (variant("badconfig") / "config.json").write_text("{not json", encoding="utf-8")
    shape = variant("wrongshape")
    state = torch.load(shape / "model.pt", weights_only=True)
    state["linear.bias"] = torch.zeros(3)
    torch.save(state, shape / "model.pt")
    (repo / "noversions").mkdir()
    (repo / "Bad Name").mkdir()  # not a valid model name: skipped
    outside = tmp_path / "outside"
    shutil.copytree(TIMEMACHINE, outside / "timemachine")
    (repo / "escape").symlink_to(outside / "timemachine", target_is_directory=True)

    server = await make_server(model_repository=repo)
    async with connect(server) as client:
        models = {m.name: m for m in await client.list_models()}
        assert "Bad Name" not in models and "escape" not in models
        assert models["timemachine"].state == "ready"
        for name, clue in [("pickled", "refused"), ("badconfig", "JSON"),
                           ("wrongshape", "linear.bias"), ("noversions", "version")]:
            assert models[name].state == "failed", name
            assert clue in models[name].error, (name, models[name].error)
            with pytest.raises(UnavailableError):
                await client.generate("time", model=name, max_tokens=3)
        assert (await client.generate("time", max_tokens=3)).model == "timemachine"
        assert await client.health() == "SERVING"
    assert not marker.exists(), "loading a model must never unpickle arbitrary objects"
