"""The blocking client against the fake server."""

import grpc
import pytest
from rnnserve.client import (
    AbortedError,
    Client,
    DeadlineExceededError,
    Generation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    RnnserveError,
    UnauthenticatedError,
    UnavailableError,
)

SLACK = 0.1
"""The server's view of a deadline is rounded by gRPC's timer; allow a little over."""


def test_generate(client, fake):
    result = client.generate("hello", max_tokens=12, model="tm", temperature=0.5, seed=3)
    assert result == Generation(
        text="the time mac", session_id="", finish_reason="length",
        prefix_tokens=5, generated_tokens=12, model="tm", model_version=2,
    )
    request = fake.state.last("Generate").request
    assert (request.prefix, request.max_tokens, request.temperature, request.seed) == (
        "hello", 12, 0.5, 3
    )


def test_generate_with_stop(client):
    result = client.generate("x", max_tokens=30, stop=("machine", "zzz"))
    assert (result.text, result.finish_reason) == ("the time machine", "stop")


def test_stream_concatenates_to_the_unary_text(client):
    chunks = list(client.stream("hello", max_tokens=18))
    assert len(chunks) == 5
    assert "".join(c.text for c in chunks) == client.generate("hello", max_tokens=18).text
    assert [c.finish_reason for c in chunks] == ["", "", "", "", "length"]
    assert chunks[-1].generated_tokens == 18


def test_stopping_a_stream_early_is_fine(client):
    stream = client.stream("hello", max_tokens=40)
    assert next(stream).text == "the "
    stream.close()
    assert client.generate("again").text == "the time m"


def test_classify(client, fake):
    results = client.classify(["a good film", "bad"], model="sentiment")
    assert [(r.label, r.score) for r in results] == [("positive", 0.875), ("negative", 0.125)]
    assert results[0].tokens == ()
    assert results[0].model == "sentiment"
    assert list(fake.state.last("Classify").request.texts) == ["a good film", "bad"]


def test_classify_one_text_with_explanation(client):
    (result,) = client.classify("so good", explain=True)
    assert [(t.token, t.weight) for t in result.tokens] == [("so", 0.25), ("good", 0.5)]


def test_models(client):
    models = client.list_models()
    assert [(m.name, m.state, m.is_default) for m in models] == [
        ("timemachine", "ready", True), ("broken", "failed", False)
    ]
    assert models[0].metrics == {"perplexity": 1.25}
    assert client.get_model("broken").error == "model.pt: unexpected key 'x'"


def test_health(client):
    assert client.health() == "SERVING"
    assert client.health("rnnserve.v1.GenerationService") == "SERVING"
    with pytest.raises(NotFoundError):
        client.health("nope")


def test_end_session(client, fake):
    opened = client.generate("abc", max_tokens=5, keep_session=True)
    assert opened.session_id == "s1"
    again = client.generate("de", session_id="s1", keep_session=True, max_tokens=5)
    assert again.session_id == "s1"
    assert client.end_session("s1") == 3 + 5 + 2 + 5
    with pytest.raises(NotFoundError, match="unknown session"):
        client.end_session("s1")


# --------------------------------------------------------------------- deadline, metadata


def test_every_call_carries_the_default_deadline(client, fake):
    client.generate("a")
    list(client.stream("a"))
    client.classify("a")
    client.list_models()
    client.get_model("timemachine")
    client.health()
    client.generate("a", keep_session=True)
    client.end_session("s1")
    assert len(fake.state.calls) == 8
    for call in fake.state.calls:
        assert call.time_remaining is not None, call.method
        assert 3.0 < call.time_remaining <= 5.0 + SLACK, call.method


def test_per_call_timeout_overrides_the_default(client, fake):
    client.generate("a", timeout=1.0)
    client.list_models(timeout=60.0)
    assert fake.state.last("Generate").time_remaining <= 1.0 + SLACK
    assert 55.0 < fake.state.last("ListModels").time_remaining <= 60.0 + SLACK


def test_deadline_exceeded(client, fake):
    fake.state.delay = 1.0
    with pytest.raises(DeadlineExceededError):
        client.generate("a", timeout=0.1)


def test_metadata_is_sent(fake):
    with Client(fake.target, metadata={"Authorization": "Bearer s3cret"}) as c:
        c.generate("a")
        list(c.stream("a"))
        c.health()
    for call in fake.state.calls:
        assert call.metadata["authorization"] == "Bearer s3cret", call.method
        assert call.metadata["user-agent"].startswith("rnnserve-python/")


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ABORTED, AbortedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.DATA_LOSS, RnnserveError),
    ],
)
def test_status_codes_become_typed_errors(client, fake, code, error_class):
    fake.state.fail("Generate", code, "what went wrong")
    with pytest.raises(error_class) as info:
        client.generate("a")
    assert type(info.value) is error_class
    assert info.value.code is code
    assert info.value.details == "what went wrong"
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_server_validation_errors(client):
    with pytest.raises(InvalidArgumentError, match="prefix"):
        client.generate("")
    with pytest.raises(NotFoundError, match="session_id"):
        client.generate("a", session_id="nope")
    with pytest.raises(InvalidArgumentError, match="texts"):
        client.classify([])
    with pytest.raises(NotFoundError, match="model"):
        client.get_model("nope")


def test_stream_error_before_the_first_chunk(client, fake):
    fake.state.fail("GenerateStream", grpc.StatusCode.ABORTED, "session busy")
    with pytest.raises(AbortedError, match="session busy"):
        list(client.stream("a"))


def test_stream_error_mid_iteration(client, fake):
    fake.state.stream_fail_after = 2
    received = []
    with pytest.raises(InternalError, match="request id") as info:
        for chunk in client.stream("a", max_tokens=20):
            received.append(chunk.text)
    assert received == ["the ", "time"]
    assert str(info.value) == "INTERNAL: internal error (request id r-1)"


def test_unreachable_server_is_unavailable():
    with Client("127.0.0.1:1", timeout=5.0, retries=0) as c, pytest.raises(UnavailableError):
        c.health()


# ----------------------------------------------------------------------------- retries


def test_unavailable_is_retried(fake):
    fake.state.fail("Generate", grpc.StatusCode.UNAVAILABLE, "model loading", times=2)
    with Client(fake.target, retries=3) as c:
        assert c.generate("a").text == "the time m"
    assert fake.state.methods() == ["Generate"] * 3


def test_streams_are_retried_before_the_first_chunk(fake):
    fake.state.fail("GenerateStream", grpc.StatusCode.UNAVAILABLE, "model loading", times=2)
    with Client(fake.target, retries=3) as c:
        assert "".join(chunk.text for chunk in c.stream("a")) == "the time m"
    assert fake.state.methods() == ["GenerateStream"] * 3


def test_no_retries(fake):
    fake.state.fail("Generate", grpc.StatusCode.UNAVAILABLE, "model loading", times=2)
    with Client(fake.target, retries=0) as c, pytest.raises(UnavailableError, match="loading"):
        c.generate("a")
    assert fake.state.methods() == ["Generate"]


def test_retries_give_up(fake):
    fake.state.fail("ListModels", grpc.StatusCode.UNAVAILABLE, "model loading", times=5)
    with Client(fake.target, retries=1) as c, pytest.raises(UnavailableError):
        c.list_models()
    assert fake.state.methods() == ["ListModels"] * 2


def test_other_codes_are_not_retried(client, fake):
    fake.state.fail("Generate", grpc.StatusCode.INTERNAL, "boom", times=2)
    with pytest.raises(InternalError):
        client.generate("a")
    assert fake.state.methods() == ["Generate"]


def test_context_manager_and_repr(fake):
    with Client(fake.target) as c:
        assert c.health() == "SERVING"
    assert repr(c) == f"Client(target={fake.target!r})"
