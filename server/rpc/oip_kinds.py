"""The Open Inference Protocol's tensor conventions, one table entry per model kind.

- classifier: input ``text`` BYTES [N]; outputs ``score`` FP32 [N] (P(positive), bit-equal to
  Classify's) and ``label`` BYTES [N];
- charlm: input ``text_input`` BYTES [1], optional ``max_tokens`` INT32 [1] (0 or absent: the
  server default), ``temperature`` FP32 [1], ``top_k`` INT32 [1], ``top_p`` FP32 [1], ``seed``
  UINT64 [1], ``stop`` BYTES [k]; output ``text_output`` BYTES [1] (Generate's text). The
  sequence parameters continue sessions (:mod:`rnnserve.server.serving.sequences`);
- forecast: inputs ``series`` FP32 [T] (the observed points) and ``horizon`` INT32 [1]; output
  ``values`` FP32 [horizon] (Forecast's values; no sequences over this protocol yet).

Each entry says what ModelMetadata advertises and how the tensors become one call into the
serving logic (:class:`Backends`) and back. ``run`` yields pieces of the answer, each with
whether it is the last: one for a classifier, one per coalesced chunk of text for a char LM
(ModelStreamInfer sends each as a response at once; ModelInfer joins them with ``join``).
Adding a kind is adding an entry to ``KINDS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from rnnserve.models.kinds import ModelKind
from rnnserve.server.errors import InvalidArgumentError
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.rpc.tensors import Tensors, TensorSpec
from rnnserve.server.serving.classification import Classifier
from rnnserve.server.serving.forecasting import Forecasting
from rnnserve.server.serving.requests import ForecastParams, GenerateParams
from rnnserve.server.serving.sequences import SequenceFlags, Sequences


@dataclass(frozen=True)
class Backends:
    """The serving logic the protocol's models reach."""

    classifier: Classifier
    sequences: Sequences
    forecasting: Forecasting


Piece = tuple[Tensors, bool]
"""A piece of an answer and whether it is the last."""
Run = Callable[[Backends, str, Tensors, SequenceFlags], AsyncIterator[Piece]]


@dataclass(frozen=True)
class KindTensors:
    """A model kind as the protocol sees it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run: Run
    join: Callable[[list[Tensors]], Tensors]
    decoupled: bool  # ModelStreamInfer may send several responses per request


# --- classifiers -------------------------------------------------------------------------------
async def _classify(b: Backends, model: str, x: Tensors, seq: SequenceFlags
                    ) -> AsyncIterator[Piece]:
    _no_sequence(seq, "classifiers")
    texts = [_text("text", v) for v in x["text"]]
    outcome = await b.classifier.classify(model, texts, False)
    yield {
        "score": np.array([r.score for r in outcome.results], dtype=np.float32),
        "label": [r.label.encode("utf-8") for r in outcome.results],
    }, True


def _only(pieces: list[Tensors]) -> Tensors:
    return pieces[-1]


# --- char LMs ----------------------------------------------------------------------------------
async def _generate(b: Backends, model: str, x: Tensors, seq: SequenceFlags
                    ) -> AsyncIterator[Piece]:
    max_tokens = _scalar(x, "max_tokens", 0)
    if max_tokens < 0:
        raise InvalidArgumentError("max_tokens", "must not be negative")
    params = GenerateParams(
        model=model,
        prefix=_text("text_input", x["text_input"][0]),
        max_tokens=int(max_tokens),
        options=DecodingOptions(
            temperature=float(_scalar(x, "temperature", 0.0)),
            top_k=_scalar(x, "top_k", 0),
            top_p=float(_scalar(x, "top_p", 0.0)),
            seed=_scalar(x, "seed", 0),
            stop=tuple(_text("stop", v) for v in x.get("stop", ())),
        ),
    )
    async with contextlib.aclosing(b.sequences.generate(params, seq)) as chunks:
        async for chunk in chunks:
            yield {"text_output": [chunk.text.encode("utf-8")]}, chunk.finish_reason is not None


def _concatenate(pieces: list[Tensors]) -> Tensors:
    return {"text_output": [b"".join(p["text_output"][0] for p in pieces)]}


# --- forecasters ------------------------------------------------------------------------------
async def _forecast(b: Backends, model: str, x: Tensors, seq: SequenceFlags
                    ) -> AsyncIterator[Piece]:
    _no_sequence(seq, "forecasters over this protocol")
    horizon = _scalar(x, "horizon", 0)
    if horizon < 0:
        raise InvalidArgumentError("horizon", "must not be negative")
    params = ForecastParams(model=model, series=tuple(float(v) for v in x["series"]),
                            horizon=int(horizon))
    async with contextlib.aclosing(b.forecasting.forecast(params)) as chunks:
        async for chunk in chunks:
            yield {"values": np.array(chunk.values, dtype=np.float32)}, chunk.done


def _values(pieces: list[Tensors]) -> Tensors:
    return {"values": np.concatenate([p["values"] for p in pieces])}


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(name, "is not valid UTF-8") from exc


def _scalar(x: Tensors, name: str, default: int | float) -> int | float:
    if name not in x:
        return default
    return x[name][0].item()


def _no_sequence(seq: SequenceFlags, what: str) -> None:
    if seq.id or seq.start or seq.end:
        raise InvalidArgumentError("sequence_id", f"{what} keep no sequences")


def _one(name: str, datatype: str, optional: bool = True) -> TensorSpec:
    return TensorSpec(name, datatype, (1,), optional)


KINDS: dict[str, KindTensors] = {
    ModelKind.CLASSIFIER: KindTensors(
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("score", "FP32", (-1,)), TensorSpec("label", "BYTES", (-1,))),
        run=_classify, join=_only, decoupled=False,
    ),
    ModelKind.CHARLM: KindTensors(
        inputs=(
            _one("text_input", "BYTES", optional=False),
            _one("max_tokens", "INT32"),
            _one("temperature", "FP32"),
            _one("top_k", "INT32"),
            _one("top_p", "FP32"),
            _one("seed", "UINT64"),
            TensorSpec("stop", "BYTES", (-1,), optional=True),
        ),
        outputs=(_one("text_output", "BYTES", optional=False),),
        run=_generate, join=_concatenate, decoupled=True,
    ),
}
"""The tensor conventions of every kind the protocol serves, by kind name."""
KINDS[ModelKind.FORECAST] = KindTensors(
    inputs=(TensorSpec("series", "FP32", (-1,)), _one("horizon", "INT32", optional=False)),
    outputs=(TensorSpec("values", "FP32", (-1,)),),
    run=_forecast, join=_values, decoupled=True,
)
