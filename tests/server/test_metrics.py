"""/metrics after real traffic: counts equal what was done, names follow Prometheus conventions."""

from __future__ import annotations

import asyncio
import contextlib

from conftest import TEST_DEVICE
from rnnserve.client import InvalidArgumentError, NotFoundError

MODEL = "timemachine"


async def test_metrics_count_the_traffic(server, aclient, metrics_of, timemachine_config):
    before = await metrics_of(server)
    assert before.value("rnnserve_requests_total", protocol="rnnserve", method="Generate",
                        model=MODEL, code="OK") == 0

    lengths = [10, 20, 30]
    for n in lengths:
        await aclient.generate("the time", max_tokens=n)
    streamed = [c async for c in aclient.stream("time", max_tokens=15)]
    with contextlib.suppress(InvalidArgumentError):
        await aclient.generate("", max_tokens=5)
    with contextlib.suppress(InvalidArgumentError):
        await aclient.generate("x", max_tokens=5, temperature=-1)
    with contextlib.suppress(NotFoundError):
        await aclient.generate("x", session_id="nope")
    sessions = [await aclient.generate("time", max_tokens=7, keep_session=True) for _ in range(3)]
    await aclient.end_session(sessions[0].session_id)
    stopped = await aclient.generate("the time traveller", max_tokens=200, stop=["e"])
    generated = sum(lengths) + 15 + 3 * 7 + len(stopped.text)

    view = await metrics_of(server)
    ok = view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model=MODEL, code="OK")
    assert ok == len(lengths) + 3 + 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="GenerateStream", model=MODEL,
                      code="OK") == 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model=MODEL,
                      code="INVALID_ARGUMENT") == 2
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model=MODEL,
                      code="NOT_FOUND") == 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="EndSession", model=MODEL,
                      code="OK") == 1
    assert view.value("rnnserve_generated_tokens_total", model=MODEL) == generated
    assert view.value("rnnserve_prefix_tokens_total", model=MODEL) == (
        3 * len("the time") + len("time") + 3 * len("time") + len("the time traveller"))
    # every successful generation saw its first token once
    assert view.value("rnnserve_time_to_first_token_seconds_count", model=MODEL) == ok + 1
    assert view.value("rnnserve_request_duration_seconds_count", protocol="rnnserve",
                      method="Generate",
                      model=MODEL) == ok + 3
    assert view.value("rnnserve_stream_messages_total", model=MODEL) == len(streamed)
    assert view.value("rnnserve_requests_in_flight", method="Generate") == 0

    # sessions: two left, each holding an LSTM's (h, c) for every layer, float32
    arch = timemachine_config["architecture"]
    state_bytes = 2 * arch["num_layers"] * arch["num_hiddens"] * 4
    assert view.value("rnnserve_sessions_active", model=MODEL) == 2
    assert view.value("rnnserve_session_state_bytes", model=MODEL) == 2 * state_bytes
    assert view.value("rnnserve_sessions_removed_total", model=MODEL, reason="ended") == 1
    assert view.value("rnnserve_session_oldest_age_seconds") > 0
    assert view.value("rnnserve_session_max_idle_seconds") > 0
    assert view.value("rnnserve_session_lifetime_seconds_count", reason="ended") == 1

    info = view.matching("rnnserve_model_info", model=MODEL)
    assert info == [({"model": MODEL, "version": "1", "kind": "charlm", "device": TEST_DEVICE,
                      "architecture": f"lstm {arch['num_layers']}x{arch['num_hiddens']}"}, 1.0)]
    assert view.value("rnnserve_model_ready", model=MODEL) == 1

    for s in sessions[1:]:
        await aclient.end_session(s.session_id)
    after = await metrics_of(server)
    assert after.value("rnnserve_sessions_active", model=MODEL) == 0
    assert after.value("rnnserve_session_state_bytes", model=MODEL) == 0
    assert after.value("rnnserve_session_oldest_age_seconds") == 0


async def test_classification_and_batch_metrics(server, aclient, metrics_of):
    await aclient.classify(["good", "bad", "fine"])
    await asyncio.gather(*(aclient.classify(f"text {i}") for i in range(5)))
    with contextlib.suppress(InvalidArgumentError):
        await aclient.classify([])
    view = await metrics_of(server)
    assert view.value("rnnserve_classified_texts_total", model="sentiment") == 8
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Classify", model="sentiment",
                      code="OK") == 6
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Classify", model="sentiment",
                      code="INVALID_ARGUMENT") == 1
    assert view.value("rnnserve_batch_size_sum", model="sentiment", engine="classification") == 8
    assert view.value("rnnserve_model_ready", model="sentiment") == 1
    assert view.matching("rnnserve_model_info", model="sentiment", kind="classifier")


async def test_cancelled_generations_and_rejections_are_counted(make_server, connect, metrics_of):
    server = await make_server(max_active_generations=1, max_tokens_limit=100_000)
    async with connect(server) as client:
        long = client.stream("time", max_tokens=100_000)
        async with contextlib.aclosing(long):
            await anext(long)
            with contextlib.suppress(Exception):
                await client.generate("x", max_tokens=2)

        async def counted() -> bool:
            view = await metrics_of(server)
            return view.value("rnnserve_cancelled_generations_total", model=MODEL) == 1

        for _ in range(250):
            if await counted():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the cancelled stream was never counted")
    view = await metrics_of(server)
    assert view.value("rnnserve_rejected_total", model=MODEL, limit="generations") == 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Generate", model=MODEL,
                      code="RESOURCE_EXHAUSTED") == 1
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="GenerateStream", model=MODEL,
                      code="CANCELLED") == 1
    assert view.value("rnnserve_active_generations", model=MODEL) == 0


async def test_metric_names_follow_prometheus_conventions(server, aclient, metrics_of):
    await aclient.generate("time", max_tokens=3)
    view = await metrics_of(server)
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(view.text))
    ours = [f for f in families if f.name.startswith("rnnserve_")]
    assert len(ours) >= 20
    for family in ours:
        assert family.documentation, family.name
        if family.type == "counter":
            assert any(s.name == family.name + "_total" for s in family.samples) or \
                not family.samples, family.name
        assert not family.name.endswith(("_ms", "_milliseconds", "_kb")), family.name


async def test_client_chosen_names_do_not_become_unbounded_metric_labels(server, aclient,
                                                                         metrics_of):
    """A label value per made-up model name would let any client blow up the time series."""
    for i in range(12):
        for call in (lambda n: aclient.generate("x", model=n, max_tokens=2),
                     lambda n: aclient.classify(["x"], model=n),
                     lambda n: aclient.get_model(n)):
            with contextlib.suppress(NotFoundError):
                await call(f"made-up-{i}")
        with contextlib.suppress(NotFoundError):
            async for _ in aclient.stream("x", model=f"made-up-stream-{i}", max_tokens=2):
                pass
    view = await metrics_of(server)
    labels = {lbl["model"] for name in ("rnnserve_requests_total",
                                        "rnnserve_request_duration_seconds_count",
                                        "rnnserve_stream_messages_total")
              for lbl, _ in view.matching(name)}
    assert not any(label.startswith("made-up") for label in labels), sorted(labels)
    assert len(labels) <= 4, sorted(labels)


async def test_every_cancelled_stream_is_counted_as_cancelled(make_server, connect, metrics_of,
                                                             poll):
    """A client that goes away mid-stream is CANCELLED, whether the server was waiting for
    the engine (asyncio.CancelledError) or busy sending (GeneratorExit at the yield)."""
    server = await make_server(max_tokens_limit=100_000)
    cancels = 20
    async with connect(server) as client:
        for i in range(cancels):
            stream = client.stream("the time", max_tokens=100_000)
            async with contextlib.aclosing(stream):
                await anext(stream)
                await asyncio.sleep(0.01 * (i % 3))

        async def all_dropped() -> bool:
            view = await metrics_of(server)
            return view.value("rnnserve_cancelled_generations_total", model=MODEL) == cancels
        await poll(all_dropped, timeout=10, what="the engine to drop every cancelled stream")
        assert (await client.generate("time", max_tokens=3)).generated_tokens == 3
    view = await metrics_of(server)
    counted = {lbl["code"]: v for lbl, v in view.matching("rnnserve_requests_total",
                                                          method="GenerateStream")}
    assert counted == {"CANCELLED": cancels}
    assert view.value("rnnserve_requests_in_flight", method="GenerateStream") == 0
