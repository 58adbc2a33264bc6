"""Protobuf ⇄ client value conversions."""

import pytest
from grpc_health.v1 import health_pb2
from rnnserve.client import Classification, Generation, GenerationChunk, ModelInfo, TokenWeight, _convert
from rnnserve.v1 import classification_pb2, generation_pb2, models_pb2


def test_generate_request_carries_every_field():
    request = _convert.generate_request(
        "abc", model="m", max_tokens=7, temperature=0.5, top_k=3, top_p=0.9, seed=42,
        stop=["x", "yz"], session_id="s", keep_session=True,
    )
    assert request == generation_pb2.GenerateRequest(
        model="m", prefix="abc", max_tokens=7, temperature=0.5, top_k=3, top_p=0.9,
        seed=42, stop=["x", "yz"], session_id="s", keep_session=True,
    )


def test_a_lone_stop_string_is_one_stop_not_its_characters():
    assert list(_convert.generate_request("a", stop="\n\n").stop) == ["\n\n"]


def test_a_lone_text_is_one_text():
    assert list(_convert.classify_request("a b").texts) == ["a b"]
    assert list(_convert.classify_request(("x", "y"), explain=True).texts) == ["x", "y"]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (generation_pb2.FINISH_REASON_UNSPECIFIED, ""),
        (generation_pb2.FINISH_REASON_LENGTH, "length"),
        (generation_pb2.FINISH_REASON_STOP, "stop"),
        (generation_pb2.FINISH_REASON_CANCELLED, "cancelled"),
        (99, ""),  # a newer server's value
    ],
)
def test_finish_reason(reason, expected):
    message = generation_pb2.GenerateResponse(text="x", finish_reason=reason)
    assert _convert.generation_from_pb(message).finish_reason == expected


def test_generation_and_chunk():
    fields = dict(
        text="ab", session_id="s", finish_reason=generation_pb2.FINISH_REASON_STOP,
        prefix_tokens=3, generated_tokens=2, model="m", model_version=4,
    )
    assert _convert.generation_from_pb(generation_pb2.GenerateResponse(**fields)) == Generation(
        "ab", "s", "stop", 3, 2, "m", 4
    )
    chunk = _convert.chunk_from_pb(generation_pb2.GenerateStreamResponse(**fields))
    assert chunk == GenerationChunk("ab", "s", "stop", 2, "m", 4, prefix_tokens=3)


def test_classifications():
    message = classification_pb2.ClassifyResponse(
        results=[
            classification_pb2.Classification(
                label="positive", score=0.75,
                tokens=[classification_pb2.TokenWeight(token="good", weight=0.5)],
            ),
            classification_pb2.Classification(label="negative", score=0.25),
        ],
        model="sentiment",
        model_version=3,
    )
    assert _convert.classifications_from_pb(message) == [
        Classification("positive", 0.75, (TokenWeight("good", 0.5),), "sentiment", 3),
        Classification("negative", 0.25, (), "sentiment", 3),
    ]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (models_pb2.MODEL_STATE_READY, "ready"),
        (models_pb2.MODEL_STATE_LOADING, "loading"),
        (models_pb2.MODEL_STATE_FAILED, "failed"),
        (models_pb2.MODEL_STATE_UNSPECIFIED, ""),
    ],
)
def test_model_info(state, expected):
    message = models_pb2.ModelInfo(
        name="tm", version=2, kind="charlm", state=state, error="e", device="cuda:0",
        is_default=True, architecture="lstm 2x256", vocab_size=28, parameters=10**10,
        metrics={"perplexity": 1.5},
    )
    info = ModelInfo("tm", 2, "charlm", expected, "e", "cuda:0", True, "lstm 2x256", 28, 10**10,
                     {"perplexity": 1.5})
    assert _convert.model_info_from_pb(message) == info
    assert _convert.get_model_from_pb(models_pb2.GetModelResponse(model=message)) == info
    listed = _convert.models_from_pb(models_pb2.ListModelsResponse(models=[message, message]))
    assert listed == [info, info]


def test_health_status_names():
    serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    assert _convert.health_from_pb(serving) == "SERVING"
    assert _convert.health_from_pb(health_pb2.HealthCheckResponse(status=42)) == "UNKNOWN"


def test_values_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Generation("x").text = "y"
