"""Open Inference Protocol tensors and sequence parameters, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from rnnserve.server.errors import InvalidArgumentError
from rnnserve.server.rpc.oip import _sequence
from rnnserve.server.rpc.oip_kinds import KINDS
from rnnserve.server.rpc.tensors import decode_inputs, fill_outputs
from rnnserve.server.serving.sequences import SequenceFlags
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

CHARLM, CLASSIFIER = KINDS["charlm"], KINDS["classifier"]
Tensor = service_pb2.ModelInferRequest.InferInputTensor


def request(*tensors: Tensor, raw: list[bytes] | None = None) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name="m", inputs=list(tensors),
                                         raw_input_contents=raw or [])


def packed(*items: bytes) -> bytes:
    return serialize_byte_tensor(np.array(items, dtype=np.object_)).item()


def test_raw_and_typed_contents_decode_alike():
    texts = [b"good", "caf\u00e9".encode(), b""]
    raw = decode_inputs(request(Tensor(name="text", datatype="BYTES", shape=[3, 1]),
                                raw=[packed(*texts)]), CLASSIFIER.inputs)
    typed = decode_inputs(request(Tensor(name="text", datatype="BYTES", shape=[3],
                                         contents={"bytes_contents": texts})), CLASSIFIER.inputs)
    assert raw["text"] == typed["text"] == texts
    got = decode_inputs(request(
        Tensor(name="text_input", datatype="BYTES", shape=[1], contents={"bytes_contents": [b"a"]}),
        Tensor(name="temperature", datatype="FP32", shape=[1], contents={"fp32_contents": [0.5]}),
        Tensor(name="seed", datatype="UINT64", shape=[1], contents={"uint64_contents": [2**63]}),
    ), CHARLM.inputs)
    assert got["temperature"].dtype == np.float32 and got["seed"][0] == 2**63


@pytest.mark.parametrize("req,words", [
    (request(Tensor(name="text", datatype="BYTES", shape=[2]), raw=[packed(b"a")]),
     "hold 1 elements; the shape says 2"),
    (request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[b"\x05\x00\x00\x00ab"]),
     "end inside an element"),
    (request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[b"\x05\x00"]),
     "end inside a length prefix"),
    (request(Tensor(name="text", datatype="BYTES", shape=[1]),
             Tensor(name="text", datatype="BYTES", shape=[1]), raw=[packed(b"a"), packed(b"b")]),
     "more than once"),
    (request(Tensor(name="text", datatype="BYTES", shape=[1]), raw=[packed(b"a"), b""]),
     "2 buffers for 1 inputs"),
    (request(Tensor(name="text", datatype="BYTES", shape=[-1]), raw=[packed(b"a")]), "shape"),
    (request(), "text: is a required input"),
])
def test_malformed_tensors_are_invalid_arguments(req, words):
    with pytest.raises(InvalidArgumentError) as info:
        decode_inputs(req, CLASSIFIER.inputs)
    assert words in info.value.message


def test_numeric_raw_contents_must_match_the_shape():
    bad = request(Tensor(name="text_input", datatype="BYTES", shape=[1]),
                  Tensor(name="max_tokens", datatype="INT32", shape=[1]),
                  raw=[packed(b"a"), b"\x01\x00"])
    with pytest.raises(InvalidArgumentError, match="max_tokens: raw contents hold 2 bytes"):
        decode_inputs(bad, CHARLM.inputs)


def outputs(tensors, requested=()) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse()
    fill_outputs(response, tensors, CLASSIFIER.outputs, requested)
    return response


def test_outputs_are_raw_and_requested_ones_only():
    tensors = {"score": np.array([0.25, 0.75], dtype=np.float32),
               "label": [b"negative", b"positive"]}
    response = outputs(tensors)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("score", "FP32", [2]), ("label", "BYTES", [2])]
    raw = response.raw_output_contents
    assert np.frombuffer(raw[0], dtype="<f4").tolist() == [0.25, 0.75]
    assert deserialize_bytes_tensor(raw[1]).tolist() == [b"negative", b"positive"]
    assert [o.name for o in outputs(tensors, ["label"]).outputs] == ["label"]
    with pytest.raises(InvalidArgumentError, match="unknown output 'scores'"):
        outputs(tensors, ["scores"])


def with_params(**params: dict) -> service_pb2.ModelInferRequest:
    req = request()
    for name, value in params.items():
        for field, v in value.items():
            setattr(req.parameters[name], field, v)
    return req


def test_sequence_parameters():
    assert _sequence(request()) == SequenceFlags()
    assert _sequence(with_params(sequence_id={"int64_param": 5},
                                 sequence_start={"bool_param": True})) == \
        SequenceFlags("int:5", start=True)
    # an integer id is the same sequence whichever integer field carries it; a string is not
    assert _sequence(with_params(sequence_id={"uint64_param": 5})).id == "int:5"
    assert _sequence(with_params(sequence_id={"string_param": "5"})).id == "str:5"
    for params, field in (({"sequence_id": {"int64_param": -1}}, "sequence_id"),
                          ({"sequence_id": {"double_param": 1.5}}, "sequence_id"),
                          ({"sequence_end": {"int64_param": 1}}, "sequence_end")):
        with pytest.raises(InvalidArgumentError) as info:
            _sequence(with_params(**params))
        assert info.value.field == field
