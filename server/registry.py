"""The model registry: loading, versions, device placement, readiness, and one engine per model.

At start every model directory of the repository is loaded (its highest version unless pinned)
onto the configured device. A model that fails to load is kept as FAILED with its reason, shown
by ListModels, the log and the health of its service, and never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from rnnserve.models.checkpoint import (
    CheckpointError,
    LoadedModel,
    list_model_dirs,
    load_model,
    select_version,
    version_dir,
)
from rnnserve.server.batcher import ClassificationBatcher
from rnnserve.server.engine import GenerationEngine
from rnnserve.server.errors import (
    InvalidArgumentError,
    ModelNotFoundError,
    ModelNotReadyError,
    NoDefaultModelError,
)
from rnnserve.server.metrics import Metrics
from rnnserve.server.requests import ModelDescription
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

CHARLM = "charlm"
CLASSIFIER = "classifier"
MAX_MODEL_BYTES = 512 * 2**20


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class ModelEntry:
    """A model of the repository and how it stands."""

    name: str
    state: ModelState = ModelState.LOADING
    version: int = 0
    kind: str = ""
    error: str = ""
    device: str = ""
    loaded: LoadedModel | None = None
    engine: GenerationEngine | None = None
    batcher: ClassificationBatcher | None = None


def resolve_device(requested: str) -> torch.device:
    """'auto' means CUDA when available; anything else is taken as a torch device string."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class DeviceExecutors:
    """One worker thread per device: it serialises all model work on that device."""

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def for_device(self, device: torch.device) -> Executor:
        key = str(device)
        if key not in self._executors:
            self._executors[key] = ThreadPoolExecutor(1, thread_name_prefix=f"rnnserve-{key}")
        return self._executors[key]

    def shutdown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()


class ModelRegistry:
    """Owns every model: what is in the repository, what is loaded, and their engines."""

    def __init__(self, settings: ServerSettings, metrics: Metrics,
                 on_change: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_change = on_change or (lambda: None)
        self._entries: dict[str, ModelEntry] = {}
        self._executors = DeviceExecutors()
        self.device = resolve_device(settings.device)

    # --- loading -------------------------------------------------------------------------------
    async def load_all(self) -> None:
        """Load every model of the repository; failures are recorded, never raised."""
        repo = self._settings.model_repository
        try:
            found = list_model_dirs(repo)
        except (CheckpointError, OSError) as err:
            logger.error("model repository %s: %s", repo, err)
            found = []
        for name, _ in found:
            self._entries[name] = ModelEntry(name=name, device=str(self.device))
            self._metrics.model_ready.labels(name).set(0)
        self._on_change()
        for name, model_dir in found:
            await self._load(self._entries[name], model_dir)
        self._on_change()
        ready = [e.name for e in self._entries.values() if e.state is ModelState.READY]
        logger.info("models ready: %s", ", ".join(ready) or "none")

    async def _load(self, entry: ModelEntry, model_dir: Path) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executors.for_device(self.device)
        try:
            version = select_version(model_dir)
            vdir = version_dir(model_dir, version)
            repo = self._settings.model_repository
            loaded = await loop.run_in_executor(
                executor, load_model, vdir, self.device, MAX_MODEL_BYTES, repo
            )
        except (CheckpointError, OSError, ValueError) as err:
            entry.state, entry.error = ModelState.FAILED, str(err)
            logger.error("model %s failed to load: %s", entry.name, err)
            return
        except Exception as err:  # noqa: BLE001 - any failure is the model's, not the server's
            entry.state, entry.error = ModelState.FAILED, f"{type(err).__name__}: {err}"
            logger.exception("model %s failed to load", entry.name)
            return
        entry.loaded, entry.version, entry.kind = loaded, loaded.version, loaded.kind
        s = self._settings
        if loaded.kind == CHARLM:
            entry.engine = GenerationEngine(
                loaded, entry.name, executor, self._metrics,
                max_batch_size=s.max_batch_size, max_active=s.max_active_generations,
                max_steps_per_iteration=s.max_steps_per_iteration,
            )
            await entry.engine.start()
        else:
            entry.batcher = ClassificationBatcher(
                loaded, entry.name, executor, self._metrics,
                max_batch_size=s.classify_max_batch_size, max_wait_ms=s.classify_max_wait_ms,
                max_queued=s.max_queued_texts,
            )
            await entry.batcher.start()
        entry.state = ModelState.READY
        self._metrics.model_ready.labels(entry.name).set(1)
        self._metrics.model_info.labels(
            entry.name, str(entry.version), entry.kind, entry.device, describe(loaded)
        ).set(1)

    async def stop(self) -> None:
        for entry in self._entries.values():
            if entry.engine is not None:
                await entry.engine.stop()
            if entry.batcher is not None:
                await entry.batcher.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._executors.shutdown)

    # --- lookup --------------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(name, list(self._entries))
        return entry

    def default_name(self, kind: str) -> str:
        """The default model of a kind: the configured one, else the first ready one by name."""
        configured = (self._settings.default_generation_model if kind == CHARLM
                      else self._settings.default_classifier)
        if configured:
            return configured
        candidates = [e for e in self.entries() if e.kind == kind]
        ready = [e for e in candidates if e.state is ModelState.READY]
        chosen = ready or candidates
        return chosen[0].name if chosen else ""

    def ready(self, name: str, kind: str) -> ModelEntry:
        """The ready model ``name`` (or the default of ``kind`` when empty)."""
        name = name or self.default_name(kind)
        if not name:
            what = "generation model" if kind == CHARLM else "classifier"
            raise NoDefaultModelError(what, list(self._entries))
        entry = self.entry(name)
        if entry.state is not ModelState.READY:
            raise ModelNotReadyError(name, entry.state.value, entry.error)
        if entry.kind != kind:
            wanted = "a generation model" if kind == CHARLM else "a classifier"
            raise InvalidArgumentError("model", f"{name!r} is a {entry.kind} model, not {wanted}")
        return entry

    def service_ready(self, kind: str) -> bool:
        """Whether the default model of a kind serves (drives the service's health)."""
        name = self.default_name(kind)
        entry = self._entries.get(name)
        return entry is not None and entry.state is ModelState.READY


def describe(loaded: LoadedModel) -> str:
    """A short architecture summary, such as 'lstm 2x256'."""
    arch = loaded.config.get("architecture", {})
    if loaded.kind == CHARLM:
        return f"{arch.get('cell', '?')} {arch.get('num_layers', 1)}x{arch.get('num_hiddens', '?')}"
    bi = "bi" if arch.get("bidirectional") else ""
    return f"sentiment {bi}lstm {arch.get('no_layers', 1)}x{arch.get('hidden_dim', '?')}"


def numeric_metrics(config: dict) -> dict[str, float]:
    """The numeric held-out metrics recorded in a model's config."""
    raw = config.get("metrics", {}) if isinstance(config.get("metrics"), dict) else {}
    return {k: float(v) for k, v in raw.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def describe_entry(entry: ModelEntry, is_default: bool) -> ModelDescription:
    """What ListModels and GetModel say about a model."""
    loaded = entry.loaded
    return ModelDescription(
        name=entry.name,
        version=entry.version,
        kind=entry.kind,
        state=entry.state.value,
        error=entry.error,
        device=entry.device,
        is_default=is_default,
        architecture=describe(loaded) if loaded else "",
        vocab_size=len(loaded.vocab) if loaded else 0,
        parameters=loaded.num_parameters if loaded else 0,
        metrics=numeric_metrics(loaded.config) if loaded else {},
    )
