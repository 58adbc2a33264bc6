"""The Open Inference Protocol (KServe v2) over gRPC, driven by Triton's own client.

The server runs in the test's event loop, so the asyncio client (``tritonclient.grpc.aio``)
talks to it directly and the blocking one (``tritonclient.grpc``) runs in a thread. Both share
the process with the server: the server serves the very message classes tritonclient ships.
Every answer is compared with the same request over rnnserve.v1 (the real rnnserve client).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from conftest import TEST_DEVICE
from rnnserve.client import AsyncClient
from rnnserve.server.rpc.oip_kinds import KINDS
from tritonclient.utils import InferenceServerException

from .test_health_reflection import grpcurl

TEXTS = ["a wonderful, moving film", "dull and lifeless", "not bad at all",
         "the plot makes no sense", "an instant classic"]
README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
INVALID = str(grpc.StatusCode.INVALID_ARGUMENT)
NOT_FOUND = str(grpc.StatusCode.NOT_FOUND)


def bytes_input(name: str, values: list[str], shape: list[int] | None = None) -> triton.InferInput:
    data = np.array([v.encode() for v in values], dtype=np.object_)
    if shape is not None:
        data = data.reshape(shape)
    tensor = triton.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


def scalar_input(name: str, value: float | int, datatype: str) -> triton.InferInput:
    dtype = {"INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64}[datatype]
    tensor = triton.InferInput(name, [1], datatype)
    tensor.set_data_from_numpy(np.array([value], dtype=dtype))
    return tensor


def generate_inputs(prefix: str, max_tokens: int, **options: float | int) -> list:
    types = {"temperature": "FP32", "top_k": "INT32", "top_p": "FP32", "seed": "UINT64"}
    inputs = [bytes_input("text_input", [prefix]), scalar_input("max_tokens", max_tokens, "INT32")]
    inputs += [scalar_input(k, v, types[k]) for k, v in options.items()]
    return inputs


def _status_of(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.status()
    return "OK"


def text_of(result: triton.InferResult) -> str:
    return b"".join(result.as_numpy("text_output").reshape(-1)).decode()


async def test_health_metadata_and_index_with_the_blocking_client(server):
    def probe() -> dict:
        client = triton.InferenceServerClient(server.target)
        try:
            return {
                "live": client.is_server_live(), "ready": client.is_server_ready(),
                "ready_models": [client.is_model_ready(m) for m in ("timemachine", "sentiment")],
                "no_model": client.is_model_ready("nope"),
                "wrong_version": client.is_model_ready("sentiment", "99"),
                "server": client.get_server_metadata(as_json=True),
                "charlm": client.get_model_metadata("timemachine", as_json=True),
                "classifier": client.get_model_metadata("sentiment", as_json=True),
                "index": client.get_model_repository_index(as_json=True),
                "config": client.get_model_config("timemachine").config,
                "statistics": _status_of(lambda: client.get_inference_statistics("sentiment")),
            }
        finally:
            client.close()

    got = await asyncio.to_thread(probe)
    assert got["live"] and got["ready"] and got["ready_models"] == [True, True]
    assert not got["no_model"] and not got["wrong_version"]
    assert got["server"]["name"] == "rnnserve" and "sequence" in got["server"]["extensions"]
    for name, kind in (("timemachine", "charlm"), ("sentiment", "classifier")):
        meta = got[kind]
        assert meta["name"] == name and meta["versions"] == ["1"]
        advertised = [(t["name"], t["datatype"], [int(d) for d in t["shape"]])
                      for t in meta["inputs"] + meta["outputs"]]
        spec = KINDS[kind]
        assert advertised == [(s.name, s.datatype, list(s.shape))
                              for s in spec.inputs + spec.outputs]
    config = got["config"]
    assert config.model_transaction_policy.decoupled and config.max_batch_size == 0
    assert [(i.name, i.optional) for i in config.input][:2] == [("text_input", False),
                                                                 ("max_tokens", True)]
    assert got["statistics"] == str(grpc.StatusCode.UNIMPLEMENTED)
    assert {(m["name"], m["state"]) for m in got["index"]["models"]} >= {
        ("timemachine", "READY"), ("sentiment", "READY")}


async def test_classify_and_generate_equal_rnnserve_v1(server, aclient: AsyncClient):
    async with triton_aio.InferenceServerClient(server.target) as client:
        expected = await aclient.classify(TEXTS)
        for shape in ([len(TEXTS)], [len(TEXTS), 1]):
            result = await client.infer("sentiment", [bytes_input("text", TEXTS, shape)])
            scores = result.as_numpy("score")
            assert scores.dtype == np.float32 and scores.shape == (len(TEXTS),)
            # bit-equal: Classify's float field holds the same float32
            assert scores.tolist() == [r.score for r in expected]
            assert [b.decode() for b in result.as_numpy("label")] == [r.label for r in expected]

        cases = [("the time traveller", 40, {}),
                 ("it was a ", 30, {"temperature": 0.8, "top_k": 5, "seed": 7}),
                 ("the ", 30, {"temperature": 1.0, "top_p": 0.9, "seed": 11})]
        for prefix, n, options in cases:
            want = await aclient.generate(prefix, max_tokens=n, **options)
            got = await client.infer("timemachine", generate_inputs(prefix, n, **options))
            assert text_of(got) == want.text, (prefix, options)
            assert got.get_response().model_version == "1"
        stop = bytes_input("stop", ["e"])
        want = await aclient.generate("the time ", max_tokens=40, stop=["e"])
        got = await client.infer("timemachine", [*generate_inputs("the time ", 40), stop])
        assert text_of(got) == want.text


async def test_streamed_chunks_concatenate_to_the_unary_text(server):
    async with triton_aio.InferenceServerClient(server.target) as client:
        prefixes = ["the time traveller", "it was"]
        unary = [text_of(await client.infer("timemachine", generate_inputs(p, 60)))
                 for p in prefixes]

        async def requests():
            for i, p in enumerate(prefixes):
                yield {"model_name": "timemachine", "inputs": generate_inputs(p, 60),
                       "request_id": str(i)}
            yield {"model_name": "sentiment", "inputs": [bytes_input("text", TEXTS[:2])],
                   "request_id": "c"}

        chunks: dict[str, list[str]] = {"0": [], "1": [], "c": []}
        finals: dict[str, list[bool]] = {"0": [], "1": [], "c": []}
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            response = result.get_response()
            finals[response.id].append(response.parameters["triton_final_response"].bool_param)
            if response.id == "c":
                chunks["c"].append(result.as_numpy("label").tolist())
            else:
                chunks[response.id].append(text_of(result))
            if sum(f.count(True) for f in finals.values()) == 3:
                break
    assert ["".join(chunks["0"]), "".join(chunks["1"])] == unary
    for key in finals:  # exactly one final response per request, the last one
        assert finals[key] and finals[key][-1] and finals[key].count(True) == 1


async def test_a_sequence_equals_an_rnnserve_session(server, aclient: AsyncClient):
    steps = ["the time traveller", " said", " and then"]
    opened = await aclient.generate(steps[0], max_tokens=20, keep_session=True)
    want = [opened.text]
    for prefix in steps[1:]:
        want.append((await aclient.generate(prefix, max_tokens=20,
                                            session_id=opened.session_id)).text)
    async with triton_aio.InferenceServerClient(server.target) as client:
        got = []
        for i, prefix in enumerate(steps):
            result = await client.infer("timemachine", generate_inputs(prefix, 20),
                                        sequence_id=42, sequence_start=i == 0,
                                        sequence_end=i == len(steps) - 1)
            got.append(text_of(result))
        assert got == want
        # ended: continuing is NOT_FOUND, as is an id that was never started
        for seq in (42, "never-started"):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("timemachine", generate_inputs("x", 5), sequence_id=seq)
            assert info.value.status() == NOT_FOUND and "sequence_start" in info.value.message()
        # a sequence over the stream continues as over unary calls
        async def requests():
            for i, prefix in enumerate(steps):
                yield {"model_name": "timemachine", "inputs": generate_inputs(prefix, 20),
                       "sequence_id": "s", "sequence_start": i == 0,
                       "sequence_end": i == len(steps) - 1, "request_id": str(i)}
        texts = ["", "", ""]
        ended = 0
        async for result, error in client.stream_infer(requests()):
            assert error is None, error
            response = result.get_response()
            texts[int(response.id)] += text_of(result)
            ended += response.parameters["triton_final_response"].bool_param
            if ended == len(steps):
                break
        assert texts == want
        with pytest.raises(InferenceServerException) as info:
            await client.infer("sentiment", [bytes_input("text", TEXTS)], sequence_id=1,
                               sequence_start=True)
        assert info.value.status() == INVALID


async def test_sequence_ids_are_private_to_each_token(make_server):
    server = await make_server(auth_tokens="token-a,token-b")
    a, b = ({"authorization": f"Bearer {t}"} for t in ("token-a", "token-b"))
    async with triton_aio.InferenceServerClient(server.target) as client, \
            AsyncClient(server.target, timeout=30, retries=0,
                        metadata=[("authorization", "Bearer token-a")]) as rnn:
        first = await client.infer("timemachine", generate_inputs("the time", 10), headers=a,
                                   sequence_id=7, sequence_start=True)
        # b cannot continue a's sequence 7 ...
        with pytest.raises(InferenceServerException) as info:
            await client.infer("timemachine", generate_inputs(" x", 10), headers=b,
                               sequence_id=7)
        assert info.value.status() == NOT_FOUND
        # ... and starting its own 7 leaves a's alone
        await client.infer("timemachine", generate_inputs("zzz", 10), headers=b,
                           sequence_id=7, sequence_start=True)
        second = await client.infer("timemachine", generate_inputs(" traveller", 10),
                                    headers=a, sequence_id=7)
        opened = await rnn.generate("the time", max_tokens=10, keep_session=True)
        cont = await rnn.generate(" traveller", max_tokens=10, session_id=opened.session_id)
        assert [text_of(first), text_of(second)] == [opened.text, cont.text]
        with pytest.raises(InferenceServerException) as info:
            await client.is_server_live()  # no token
        assert info.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)


async def test_bad_tensors_are_invalid_argument(server, metrics_of):
    cases = [
        ("sentiment", [bytes_input("texts", TEXTS)], "unknown input 'texts'"),
        ("sentiment", [scalar_input("text", 1.0, "FP32")], "datatype 'FP32'"),
        ("sentiment", [bytes_input("text", TEXTS[:4], [2, 2])], "shape [2, 2]"),
        ("sentiment", [bytes_input("text", [" "])], "is empty"),
        ("timemachine", [bytes_input("text_input", ["a", "b"])], "shape [2]"),
        ("timemachine", [scalar_input("max_tokens", 5, "INT32")], "text_input"),
        ("timemachine", [*generate_inputs("a", 5)[:1], scalar_input("max_tokens", 5, "FP32")],
         "max_tokens: datatype"),
        ("timemachine", generate_inputs("a", 5, temperature=-1.0), "temperature"),
    ]
    async with triton_aio.InferenceServerClient(server.target) as client:
        for model, inputs, words in cases:
            with pytest.raises(InferenceServerException) as info:
                await client.infer(model, inputs)
            assert info.value.status() == INVALID, (words, info.value)
            assert words in info.value.message(), (words, info.value.message())
        with pytest.raises(InferenceServerException) as info:
            await client.infer("nope", [bytes_input("text", TEXTS)])
        assert info.value.status() == NOT_FOUND

        # on the stream, an error ends only its request
        async def requests():
            yield {"model_name": "sentiment", "inputs": [bytes_input("texts", TEXTS)]}
            yield {"model_name": "sentiment", "inputs": [bytes_input("text", TEXTS)]}

        seen = []
        async for result, error in client.stream_infer(requests()):
            seen.append(str(error) if error else result.as_numpy("score").shape)
            if len(seen) == 2:
                break
        assert seen[0].startswith("INVALID_ARGUMENT: inputs[0]: unknown input") and \
            seen[1] == (len(TEXTS),)
    view = await metrics_of(server)
    assert view.value("rnnserve_requests_total", method="ModelInfer", model="sentiment",
                      code="INVALID_ARGUMENT", protocol="oip") == 4
    assert view.value("rnnserve_requests_total", method="ModelStreamInfer", model="sentiment",
                      code="OK", protocol="oip") == 1
    assert view.value("rnnserve_requests_total", method="ModelInfer", model="unknown",
                      code="NOT_FOUND", protocol="oip") == 1


async def test_grpcurl_describes_the_inference_service(server):
    code, out, err = await grpcurl(server.target, "describe", "inference.GRPCInferenceService")
    assert code == 0, err
    for method in ("ServerLive", "ModelMetadata", "ModelInfer", "ModelStreamInfer"):
        assert f"rpc {method}" in out
    code, out, err = await grpcurl(server.target, "inference.GRPCInferenceService/ServerReady")
    assert code == 0 and '"ready": true' in out, err
    code, out, err = await grpcurl(server.target, "grpc.health.v1.Health/Check",
                                   data={"service": "inference.GRPCInferenceService"})
    assert code == 0 and '"SERVING"' in out, err


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the README shows the CPU's output (another "
                    "device rounds differently, so a long greedy text may differ)")
async def test_the_readme_examples_print_what_the_readme_shows(server):
    """The "Using Triton's client" examples, run against a server on the shipped models."""
    for marker in ("readme-triton", "readme-triton-stream"):
        match = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```\s*```\n(.*?)```", README,
                          re.S)
        assert match, marker
        code = match.group(1).replace("localhost:50051", server.target)

        def run(code: str = code) -> str:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, {})
            return out.getvalue()

        assert await asyncio.to_thread(run) == match.group(2), marker


def test_tritonclient_first_then_rnnserve_in_one_process():
    """The server serves tritonclient's own message classes: no second copy, no conflict.

    (This module shows the other order: the server is imported before tritonclient.)
    """
    code = "import tritonclient.grpc.aio; import rnnserve.server.app; print('ok')"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


async def test_an_expired_sequence_is_not_found_and_its_id_freed(make_server):
    server = await make_server(session_ttl_s=0.3)
    async with triton_aio.InferenceServerClient(server.target) as client:
        await client.infer("timemachine", generate_inputs("the time", 5), sequence_id="s",
                           sequence_start=True)
        await asyncio.sleep(0.6)
        messages = []
        for _ in range(2):
            with pytest.raises(InferenceServerException) as info:
                await client.infer("timemachine", generate_inputs(" x", 5), sequence_id="s")
            assert info.value.status() == NOT_FOUND
            messages.append(info.value.message())
        assert "sequence 's' has ended" in messages[0] and "expired" in messages[0]
        assert "is not open for this client" in messages[1]


async def test_a_forecast_equals_rnnserve_v1(server, aclient: AsyncClient):
    series = [float(np.sin(0.1 * i)) for i in range(40)]
    want = await aclient.forecast(series, 10, model="sine")
    async with triton_aio.InferenceServerClient(server.target) as client:
        points = triton.InferInput("series", [len(series)], "FP32")
        points.set_data_from_numpy(np.array(series, dtype=np.float32))
        got = await client.infer("sine", [points, scalar_input("horizon", 10, "INT32")])
    values = got.as_numpy("values")
    assert values.dtype == np.float32 and values.tolist() == list(want.values)
