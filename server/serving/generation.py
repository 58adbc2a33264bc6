"""Generate, GenerateStream and EndSession: validation, sessions, and one engine call.

The prefix is normalised character-wise (as the model's config says), encoded with the model's
vocabulary (unknown characters become ``<unk>``), and handed to the model's engine together with
the session's state. Where the state starts and what is prefilled follow d2l's ``predict_ch8``:
every character but the last is consumed in prefill, and the last is the first decode step's
input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import torch
from rnnserve.models import LoadedModel, ModelKind
from rnnserve.models.text import normalize_chars
from rnnserve.server.errors import (
    InvalidArgumentError,
    echo,
)
from rnnserve.server.execution.decoding import DecodingOptions
from rnnserve.server.execution.engine import (
    GenerationEngine,
    GenerationOutbox,
    GenerationRequest,
)
from rnnserve.server.execution.slots import SlotStep
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.identity import current_client
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.registry import ModelRegistry
from rnnserve.server.serving.requests import GenerateParams, GenerationChunk
from rnnserve.server.serving.runner import ServingKind
from rnnserve.server.serving.store import SessionStoreBackend
from rnnserve.server.serving.turns import abandon_turn, begin_turn, commit_turn
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

MAX_TEMPERATURE = 100.0


def make_engine(loaded: LoadedModel, name: str, executor: Executor, metrics: Metrics,
                settings: ServerSettings) -> GenerationEngine:
    """The runner of a char language model: its continuous-batching generation engine."""
    return GenerationEngine(
        loaded, name, executor, metrics,
        max_batch_size=settings.max_batch_size, max_active=settings.max_active_generations,
        max_steps_per_iteration=settings.max_steps_per_iteration,
        threads=StepThreads(settings.torch_threads),
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        slots=graph_slots(loaded, name, settings),
    )


def graph_slots(loaded: LoadedModel, name: str, settings: ServerSettings) -> SlotStep | None:
    """The CUDA-graph row slots of a char LM when ``cuda_graphs`` is on (the default) and it is
    on a GPU. Asked for explicitly on another device: a warning, and eager steps."""
    if not settings.cuda_graphs:
        return None
    device = torch.device(loaded.device)
    if device.type != "cuda":
        if "cuda_graphs" in settings.model_fields_set:
            logger.warning("cuda_graphs is set but model %s runs on %s: its decode steps run "
                           "eagerly", name, device)
        return None
    return SlotStep(loaded.module, device, settings.max_batch_size, capture=True)


GENERATION: ServingKind[GenerationEngine] = ServingKind(
    ModelKind.CHARLM, "generation model", make_engine,
)


class Generator:
    """The serving logic behind the GenerationService."""

    def __init__(self, registry: ModelRegistry, sessions: SessionStoreBackend,
                 settings: ServerSettings, metrics: Metrics) -> None:
        self._registry = registry
        self._sessions = sessions
        self._settings = settings
        self._metrics = metrics

    # --- validation ----------------------------------------------------------------------------
    def validate(self, params: GenerateParams) -> int:
        """Check every field; returns the effective max_tokens."""
        s = self._settings
        if not params.prefix and not params.session_id:
            raise InvalidArgumentError("prefix", "must not be empty unless session_id is set")
        if len(params.prefix) > s.max_prefix_chars:
            raise InvalidArgumentError(
                "prefix", f"has {len(params.prefix)} characters, more than the limit of "
                f"{s.max_prefix_chars}"
            )
        if params.max_tokens > s.max_tokens_limit:
            raise InvalidArgumentError(
                "max_tokens", f"{params.max_tokens} is past the limit of {s.max_tokens_limit}"
            )
        check_options(params.options, s)
        return params.max_tokens or s.default_max_tokens

    # --- generation ----------------------------------------------------------------------------
    async def generate(self, params: GenerateParams) -> AsyncIterator[GenerationChunk]:
        """Run one generation; yields chunks as the engine produces them (coalesced)."""
        max_tokens = self.validate(params)
        entry, session, fresh = await begin_turn(
            self._registry, self._sessions, GENERATION, params.model, params.session_id,
            params.keep_session)
        try:
            loaded = entry.loaded
            check_stops_producible(params.options.stop, loaded.vocab.idx_to_token, entry.name)
            text = normalize_chars(params.prefix, loaded.normalization)
            ids = loaded.vocab.encode(text)
            if session is not None and session.state is not None:
                prefill = (session.pending, *ids[:-1]) if ids else ()
                pending = ids[-1] if ids else session.pending
                state = session.state.to(loaded.device)  # the Redis store hands back CPU
            else:
                prefill, pending, state = tuple(ids[:-1]), ids[-1], None
            request = GenerationRequest(prefill=prefill, pending=pending, state=state,
                                        max_tokens=max_tokens, options=params.options)
            outbox: GenerationOutbox = entry.runner.submit(request)
        except BaseException:
            await abandon_turn(self._sessions, session, fresh)
            raise
        self._metrics.prefix_tokens.labels(entry.name).inc(len(ids))
        session_id = session.id if session is not None else ""
        version = entry.version
        completed = False
        try:
            while True:
                piece, generated = await outbox.take()  # raises the generation's error
                result = outbox.result
                if piece or result is not None:
                    yield GenerationChunk(
                        text=piece, session_id=session_id,
                        finish_reason=result.finish if result is not None else None,
                        prefix_tokens=len(ids), generated_tokens=generated,
                        model=entry.name, model_version=version,
                    )
                if result is not None:
                    completed = True
                    return
        finally:
            if not completed:
                outbox.cancel()
            result = outbox.result if completed else None
            if result is None:
                await abandon_turn(self._sessions, session, fresh)
            else:
                await commit_turn(self._sessions, session, fresh, result.state, result.pending,
                                  added_tokens=len(ids) + result.generated)

    async def end_session(self, session_id: str) -> int:
        """EndSession: drop the session; returns the characters it had seen."""
        if not session_id:
            raise InvalidArgumentError("session_id", "must not be empty")
        return (await self._sessions.end(session_id, owner=current_client())).total_tokens


def check_stops_producible(stops: tuple[str, ...], tokens: list[str], model: str) -> None:
    """INVALID_ARGUMENT for a stop string with a character no token of the model contains:
    the model can never produce it, and the request would silently run to max_tokens."""
    if not stops:
        return
    producible = set("".join(tokens))
    for stop in stops:
        missing = next((c for c in stop if c not in producible), None)
        if missing is not None:
            raise InvalidArgumentError(
                "stop", f"{echo(stop)} can never be produced by model {model!r}: the character "
                f"{missing!r} is not in its vocabulary"
            )


def check_options(options: DecodingOptions, settings: ServerSettings) -> None:
    """INVALID_ARGUMENT for any decoding option out of range."""
    t = options.temperature
    if not math.isfinite(t) or t < 0 or t > MAX_TEMPERATURE:
        raise InvalidArgumentError("temperature", f"must be between 0 and {MAX_TEMPERATURE}")
    if not math.isfinite(options.top_p) or not 0.0 <= options.top_p <= 1.0:
        raise InvalidArgumentError("top_p", "must be between 0 and 1")
    if options.top_k < 0:
        raise InvalidArgumentError("top_k", "must not be negative")
    if (options.top_k or options.top_p) and t == 0:
        raise InvalidArgumentError("temperature", "top_k and top_p need a temperature above 0")
    if len(options.stop) > settings.max_stop_strings:
        raise InvalidArgumentError(
            "stop", f"at most {settings.max_stop_strings} stop strings are allowed"
        )
    for s in options.stop:
        if not s or len(s) > settings.max_stop_chars:
            raise InvalidArgumentError(
                "stop", f"each stop string must have 1 to {settings.max_stop_chars} characters"
            )
