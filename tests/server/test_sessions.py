"""DESIGN semantics 2 and 6: sessions are exact, exclusive, expire, are evicted, and are counted.

A session's text is everything sent and generated in it; continuing it with prefix B must give
exactly what one stateless Generate on the whole text gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from rnnserve.client import AbortedError, AsyncClient, InvalidArgumentError, NotFoundError

MODEL = "timemachine"


@pytest.fixture(params=["memory", "redis"])
def store(request) -> str:
    """Every test here runs against both session stores (DESIGN semantics 7)."""
    return "memory" if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
def make_server(make_server, store):  # noqa: F811 - tests/server/conftest.py's, on both stores
    async def factory(**overrides):
        overrides.setdefault("session_store", store)
        return await make_server(**overrides)

    return factory


def memory_only(store: str, why: str) -> None:
    if store != "memory":
        pytest.skip(f"memory store only: {why} (docs/deploy.md)")


async def stateless(client: AsyncClient, text: str, n: int) -> str:
    return (await client.generate(text, max_tokens=n)).text


async def retry_aborted(call, *, attempts: int = 100, delay: float = 0.02):
    """Run ``call()``; while the session is still busy (a cancel not yet seen), try again."""
    for _ in range(attempts - 1):
        try:
            return await call()
        except AbortedError:
            await asyncio.sleep(delay)
    return await call()


async def test_keep_session_opens_a_session_and_continuations_are_exact(aclient: AsyncClient):
    first = await aclient.generate("the time machine", max_tokens=30, keep_session=True)
    sid = first.session_id
    assert sid and len(sid) >= 16, "ids are server-made and unguessable"
    assert first.text == await stateless(aclient, "the time machine", 30)
    history = "the time machine" + first.text

    # several continuations in a row, each equal to one stateless call on the whole text
    for prefix, n in [(" by h g wells", 40), ("t", 25), (" and then the traveller said ", 60)]:
        cont = await aclient.generate(prefix, session_id=sid, keep_session=True, max_tokens=n)
        assert cont.session_id == sid
        assert cont.prefix_tokens == len(prefix)
        assert cont.generated_tokens == n
        assert cont.text == await stateless(aclient, history + prefix, n), prefix
        history += prefix + cont.text

    # an empty prefix continues right where the session stands
    cont = await aclient.generate("", session_id=sid, max_tokens=35)
    assert cont.prefix_tokens == 0
    assert cont.text == await stateless(aclient, history, 35)
    history += cont.text

    # characters outside the vocabulary are part of the session text too
    cont = await aclient.generate("Hello, World! ", session_id=sid, max_tokens=20)
    assert cont.text == await stateless(aclient, history + "Hello, World! ", 20)
    history += "Hello, World! " + cont.text

    total = await aclient.end_session(sid)
    assert total == len(history)
    with pytest.raises(NotFoundError) as info:
        await aclient.generate("more", session_id=sid, max_tokens=5)
    assert "ended" in info.value.details
    assert sid in info.value.details
    with pytest.raises(NotFoundError):
        await aclient.end_session(sid)


async def test_a_streamed_session_equals_the_unary_one(aclient: AsyncClient):
    chunks = [c async for c in aclient.stream("time traveller", max_tokens=50, keep_session=True)]
    sid = chunks[0].session_id
    assert sid, "the first stream message carries the new session's id"
    text = "".join(c.text for c in chunks)
    assert text == await stateless(aclient, "time traveller", 50)
    more = [c async for c in aclient.stream(" said", session_id=sid, max_tokens=40)]
    assert "".join(c.text for c in more) == await stateless(
        aclient, "time traveller" + text + " said", 40)
    await aclient.end_session(sid)


async def test_sampled_session_continuation_is_exact_too(aclient: AsyncClient):
    """With a seed, a sampled session turn equals the same sampled stateless call."""
    opts = dict(temperature=0.9, top_k=10, seed=1234)
    first = await aclient.generate("the time", max_tokens=25, keep_session=True, **opts)
    cont = await aclient.generate(" machine", session_id=first.session_id, max_tokens=30, **opts)
    whole = await aclient.generate("the time" + first.text + " machine", max_tokens=30, **opts)
    assert cont.text == whole.text


async def test_session_helper_of_the_client(aclient: AsyncClient):
    async with aclient.session() as session:
        a = await session.generate("psychologist", max_tokens=20)
        b = await session.generate(" and", max_tokens=20)
        sid = session.session_id
        assert a.session_id == b.session_id == sid
    assert session.total_tokens == len("psychologist") + 20 + len(" and") + 20
    assert b.text == await stateless(aclient, "psychologist" + a.text + " and", 20)
    with pytest.raises(NotFoundError):
        await aclient.generate("x", session_id=sid)


async def test_unknown_and_malformed_session_ids_are_not_found(aclient: AsyncClient):
    for sid in ["no-such-session", "A" * 24, "../../etc/passwd"]:
        with pytest.raises(NotFoundError) as info:
            await aclient.generate("hello", session_id=sid, max_tokens=5)
        assert "unknown" in info.value.details
        with pytest.raises(NotFoundError):
            await aclient.end_session(sid)
    # the server still serves
    assert (await aclient.generate("hello", max_tokens=5)).generated_tokens == 5


async def test_a_busy_session_is_aborted_and_a_cancelled_turn_changes_nothing(make_server, connect):
    server = await make_server(max_tokens_limit=100_000)
    async with connect(server) as client:
        opened = await client.generate("the time traveller", max_tokens=20, keep_session=True)
        sid = opened.session_id
        history = "the time traveller" + opened.text

        # a long stream on the session; while it runs, the session refuses other requests
        stream = client.stream(" long", session_id=sid, max_tokens=60_000)
        received = ""
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                received += chunk.text
                break
            assert received, "the stream started"
            with pytest.raises(AbortedError) as info:
                await client.generate(" other", session_id=sid, max_tokens=5)
            assert "busy" in info.value.details
            with pytest.raises(AbortedError):
                await client.end_session(sid)
            with pytest.raises(AbortedError):
                async for _ in client.stream("", session_id=sid, max_tokens=5):
                    pass
        # leaving the block cancelled the stream mid-way: its prefix and text are not kept
        assert len(received) < 60_000

        cont = await retry_aborted(
            lambda: client.generate(" then", session_id=sid, max_tokens=30))
        assert cont.text == await stateless(client, history + " then", 30)
        history += " then" + cont.text

        # a request that took the session and then failed changes nothing either
        with pytest.raises(InvalidArgumentError) as info:
            await client.generate("zz", session_id=sid, model="another-model", max_tokens=5)
        assert "model" in info.value.details
        cont = await client.generate(" again", session_id=sid, max_tokens=30)
        assert cont.text == await stateless(client, history + " again", 30)

        # a session whose very first request was cancelled never existed
        fresh = client.stream("fresh", keep_session=True, max_tokens=60_000)
        async with contextlib.aclosing(fresh):
            first = await anext(fresh)
        doomed = first.session_id
        assert doomed

        async def gone() -> bool:
            try:
                await client.generate("x", session_id=doomed, max_tokens=1)
            except NotFoundError:
                return True
            except AbortedError:
                return False
            return False

        for _ in range(200):
            if await gone():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the cancelled first request's session was never dropped")


async def test_idle_sessions_expire(make_server, connect, metrics_of, poll, store):
    if store != "memory":
        return await _redis_sessions_expire(make_server, connect)
    server = await make_server(session_ttl_s=0.3, session_sweep_interval_s=0.1)
    async with connect(server) as client:
        swept = (await client.generate("time", max_tokens=5, keep_session=True)).session_id
        touched = (await client.generate("time", max_tokens=5, keep_session=True)).session_id
        assert (await metrics_of(server)).value("rnnserve_sessions_active", model=MODEL) == 2

        async def sweeper_ran() -> bool:  # nobody touches `swept`: only the sweeper removes it
            view = await metrics_of(server)
            return view.value("rnnserve_sessions_removed_total", model=MODEL,
                              reason="expired") >= 2
        await poll(sweeper_ran, timeout=5, what="the sweeper to expire both idle sessions")

        for sid in (swept, touched):
            with pytest.raises(NotFoundError) as info:
                await client.generate("more", session_id=sid, max_tokens=5)
            assert "expired" in info.value.details
        view = await metrics_of(server)
        assert view.value("rnnserve_sessions_removed_total", model=MODEL, reason="expired") == 2
        assert view.value("rnnserve_sessions_active", model=MODEL) == 0
        assert view.value("rnnserve_session_state_bytes", model=MODEL) == 0


async def _redis_sessions_expire(make_server, connect) -> None:
    """Redis expires the record itself; the marker left behind tells it from an unknown id."""
    server = await make_server(session_ttl_s=1.5, session_sweep_interval_s=0.1)
    async with connect(server) as client:
        sid = (await client.generate("time", max_tokens=5, keep_session=True)).session_id
        await client.generate("", session_id=sid, max_tokens=2)  # still there within the TTL
        await asyncio.sleep(3.0)
        with pytest.raises(NotFoundError) as info:
            await client.generate("more", session_id=sid, max_tokens=5)
        assert "expired" in info.value.details and "evicted" in info.value.details


async def test_a_session_in_use_is_not_expired_by_its_own_request(make_server, connect):
    """Using a session restarts its idle clock: steady use within the TTL keeps it alive."""
    server = await make_server(session_ttl_s=0.5, session_sweep_interval_s=0.05)
    async with connect(server) as client:
        sid = (await client.generate("time", max_tokens=3, keep_session=True)).session_id
        for _ in range(6):  # 6 x 0.2 s > TTL in total, but never idle for a whole TTL
            await asyncio.sleep(0.2)
            await client.generate("", session_id=sid, max_tokens=2)
        await client.end_session(sid)


async def test_least_recently_used_sessions_are_evicted_past_the_cap(make_server, connect,
                                                                     metrics_of, store):
    memory_only(store, "Redis evicts by its own maxmemory policy, not by max_sessions")
    server = await make_server(max_sessions=2)
    async with connect(server) as client:
        a = await client.generate("alpha", max_tokens=10, keep_session=True)
        b = await client.generate("beta", max_tokens=10, keep_session=True)
        await client.generate("", session_id=a.session_id, max_tokens=3)  # a is now the newest
        c = await client.generate("gamma", max_tokens=10, keep_session=True)  # evicts b
        with pytest.raises(NotFoundError) as info:
            await client.generate("x", session_id=b.session_id, max_tokens=3)
        assert "evicted" in info.value.details

        # the recent ones still work, exactly
        cont_c = await client.generate(" ray", session_id=c.session_id, max_tokens=20)
        assert cont_c.text == await stateless(client, "gamma" + c.text + " ray", 20)
        d = await client.generate("delta", max_tokens=10, keep_session=True)  # evicts a
        with pytest.raises(NotFoundError) as info:
            await client.generate("x", session_id=a.session_id, max_tokens=3)
        assert "evicted" in info.value.details
        assert (await client.generate("", session_id=d.session_id, max_tokens=3)).text

        view = await metrics_of(server)
        assert view.value("rnnserve_sessions_removed_total", model=MODEL, reason="evicted") == 2
        assert view.value("rnnserve_sessions_removed_total", model=MODEL, reason="expired") == 0
        assert view.value("rnnserve_sessions_active", model=MODEL) == 2
        await client.end_session(c.session_id)
        view = await metrics_of(server)
        assert view.value("rnnserve_sessions_removed_total", model=MODEL, reason="ended") == 1
        assert view.value("rnnserve_sessions_active", model=MODEL) == 1


async def test_session_text_is_the_text_the_client_saw_even_when_sampling_unk(aclient):
    """At a very high temperature every index is drawn, <unk> included."""
    for seed in range(1, 9):
        a = await aclient.generate("time", max_tokens=40, temperature=100.0, seed=seed,
                                   keep_session=True)
        assert len(a.text) == a.generated_tokens, (seed, a.text)
        cont = await aclient.generate(" x", session_id=a.session_id, max_tokens=30)
        assert cont.text == await stateless(aclient, "time" + a.text + " x", 30), seed


async def test_a_turn_longer_than_the_ttl_does_not_expire_its_session(make_server, connect):
    """A busy session is never expired, and its idle clock restarts when the turn ends."""
    ttl = 0.2
    # one decode step per engine iteration: a turn of 3000 characters takes well over the TTL
    server = await make_server(session_ttl_s=ttl, session_sweep_interval_s=0.05,
                               max_tokens_limit=3000, max_steps_per_iteration=1)
    async with connect(server) as client:
        opened = await client.generate("the time", max_tokens=5, keep_session=True)
        sid = opened.session_id
        started = time.monotonic()
        turn = await client.generate(" machine", session_id=sid, max_tokens=3000)
        assert time.monotonic() - started > ttl, "the turn outlived the TTL (else no proof)"
        cont = await client.generate(" end", session_id=sid, max_tokens=10)
        history = "the time" + opened.text + " machine" + turn.text + " end"
        assert cont.text == await stateless(client, history, 10)


async def test_a_deadline_on_a_session_turn_leaves_the_session_as_it_was(make_server, connect,
                                                                         metrics_of):
    from rnnserve.client import DeadlineExceededError

    server = await make_server(max_tokens_limit=200_000)
    async with connect(server) as client:
        opened = await client.generate("the time", max_tokens=5, keep_session=True)
        with pytest.raises(DeadlineExceededError):
            await client.generate(" slow", session_id=opened.session_id, max_tokens=200_000,
                                  timeout=0.3)
        cont = await retry_aborted(
            lambda: client.generate(" fast", session_id=opened.session_id, max_tokens=10))
        assert cont.text == await stateless(client, "the time" + opened.text + " fast", 10)
    view = await metrics_of(server)
    assert view.value("rnnserve_requests_total", method="Generate", model=MODEL,
                      code="DEADLINE_EXCEEDED") == 1
