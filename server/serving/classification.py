"""Classify: validation, tokenisation, and one batcher call per request."""

from __future__ import annotations

from concurrent.futures import Executor

from rnnserve.models import LoadedModel, ModelKind
from rnnserve.server.errors import InvalidArgumentError
from rnnserve.server.execution.batcher import ClassificationBatcher
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.registry import ModelRegistry
from rnnserve.server.serving.requests import ClassificationResult, ClassifyOutcome, TokenWeight
from rnnserve.server.serving.runner import ServingKind
from rnnserve.server.settings import ServerSettings


def make_batcher(loaded: LoadedModel, name: str, executor: Executor, metrics: Metrics,
                 settings: ServerSettings) -> ClassificationBatcher:
    """The runner of a classifier: its dynamic batcher."""
    return ClassificationBatcher(
        loaded, name, executor, metrics,
        max_batch_size=settings.classify_max_batch_size,
        max_wait_ms=settings.classify_max_wait_ms, max_queued=settings.max_queued_texts,
        threads=StepThreads(settings.torch_threads),
    )


CLASSIFICATION: ServingKind[ClassificationBatcher] = ServingKind(
    ModelKind.CLASSIFIER, "classifier", make_batcher,
)


class Classifier:
    """The serving logic behind the ClassificationService."""

    def __init__(self, registry: ModelRegistry, settings: ServerSettings, metrics: Metrics) -> None:
        self._registry = registry
        self._settings = settings
        self._metrics = metrics

    def validate(self, texts: list[str]) -> None:
        s = self._settings
        if not texts:
            raise InvalidArgumentError("texts", "must hold at least one text")
        if len(texts) > s.max_texts_per_call:
            raise InvalidArgumentError(
                "texts", f"{len(texts)} texts is more than the limit of {s.max_texts_per_call}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgumentError(f"texts[{i}]", "is empty")
            if len(text) > s.max_text_chars:
                raise InvalidArgumentError(
                    f"texts[{i}]", f"has {len(text)} characters, more than the limit of "
                    f"{s.max_text_chars}"
                )

    async def classify(self, model: str, texts: list[str], explain: bool) -> ClassifyOutcome:
        self.validate(texts)
        entry = self._registry.ready(model, CLASSIFICATION)
        loaded, batcher = entry.loaded, entry.runner
        encoded = [loaded.tokenizer.encode(text, loaded.vocab) for text in texts]
        scored = await batcher.score([e.ids for e in encoded])
        negative, positive = loaded.labels[0], loaded.labels[1]
        results = []
        for enc, out in zip(encoded, scored, strict=True):
            tokens: tuple[TokenWeight, ...] = ()
            if explain:
                weights = out.attention()
                tokens = tuple(TokenWeight(tok, weights[pos])
                               for tok, pos in zip(enc.tokens, enc.positions, strict=True))
            label = positive if out.score >= 0.5 else negative
            results.append(ClassificationResult(label, out.score, tokens))
        self._metrics.child(self._metrics.classified_texts, entry.name).inc(len(texts))
        return ClassifyOutcome(results, entry.name, entry.version)
