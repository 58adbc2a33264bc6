"""The Session helpers: open on first use, continue, end on exit."""

import grpc
import pytest
from rnnserve.client import AbortedError


def test_session_opens_continues_and_ends(client, fake):
    with client.session("timemachine", temperature=0.5, seed=7, stop=["zz"]) as session:
        assert session.session_id == ""
        first = session.generate("abc", max_tokens=4)
        assert first.session_id == "s1" == session.session_id
        second = session.generate("", max_tokens=3)
        assert second.session_id == "s1"
    assert session.session_id == ""
    assert session.total_tokens == 3 + 4 + 3

    generate1, generate2, end = fake.state.calls
    assert (generate1.request.session_id, generate1.request.keep_session) == ("", True)
    assert (generate2.request.session_id, generate2.request.keep_session) == ("s1", True)
    for call in (generate1, generate2):
        request = call.request
        assert (request.model, request.temperature, request.seed) == ("timemachine", 0.5, 7)
        assert list(request.stop) == ["zz"]
    assert end.method == "EndSession" and end.request.session_id == "s1"
    assert fake.state.sessions == {}


def test_session_streams(client, fake):
    with client.session() as session:
        text = "".join(c.text for c in session.stream("abc", max_tokens=6))
        assert text == "the ti"
        assert session.session_id == "s1"
        more = list(session.stream("", max_tokens=2))
        assert [c.session_id for c in more] == ["s1"]
    assert fake.state.methods() == ["GenerateStream", "GenerateStream", "EndSession"]
    assert fake.state.calls[1].request.session_id == "s1"


def test_unused_session_sends_nothing(client, fake):
    with client.session() as session:
        pass
    assert session.close() is None
    assert fake.state.calls == []


def test_expired_session_is_ignored_on_exit(client, fake):
    with client.session() as session:
        session.generate("abc")
        fake.state.sessions.clear()  # the server expired it
    assert session.total_tokens is None
    assert fake.state.methods() == ["Generate", "EndSession"]


def test_session_ends_even_when_the_body_fails(client, fake):
    with pytest.raises(AbortedError), client.session() as session:
        session.generate("abc")
        fake.state.fail("Generate", grpc.StatusCode.ABORTED, "session busy")
        session.generate("more")
    assert fake.state.methods()[-1] == "EndSession"


def test_adopting_an_open_session(client, fake):
    opened = client.generate("abc", keep_session=True)
    with client.session(session_id=opened.session_id) as session:
        session.generate("d")
    assert fake.state.calls[1].request.session_id == opened.session_id
    assert fake.state.last("EndSession").request.session_id == opened.session_id


def test_unknown_decoding_option(client):
    with pytest.raises(TypeError, match="max_tokens"):
        client.session(max_tokens=3)


async def test_async_session(aclient, fake):
    async with aclient.session(top_k=3) as session:
        first = await session.generate("abc", max_tokens=4)
        chunks = [c async for c in session.stream("", max_tokens=4)]
        assert first.session_id == session.session_id == "s1"
        assert "".join(c.text for c in chunks) == "the "
    assert session.total_tokens == 11
    assert fake.state.methods() == ["Generate", "GenerateStream", "EndSession"]
    assert fake.state.calls[1].request.session_id == "s1"
    assert fake.state.calls[1].request.top_k == 3


async def test_async_session_ignores_not_found(aclient, fake):
    async with aclient.session() as session:
        await session.generate("abc")
        fake.state.sessions.clear()
    assert session.total_tokens is None
    assert repr(session) == "AsyncSession(model='', session_id='')"
