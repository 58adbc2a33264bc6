"""The model registry: loading, versions, device placement, readiness, and one runner per model.

(The threads that load models and run them are ``execution/devices.py``; what ListModels says
about a model is ``serving/catalog.py``.)

At start every model directory of the repository is loaded (its highest version) onto the
configured device. A model that fails to load is kept as FAILED with its reason, shown by
ListModels, the log and the health of its service, and never stops the others.

Versions change while serving (admin LoadModel/UnloadModel/ReloadModel, or polling the
repository): the new version is loaded and its engine started *beside* the old one, then the
entry is switched in one step (no await in between, so every request sees one version or the
other), the old version's sessions are dropped (they answer NOT_FOUND "no longer loaded"), and
the old engine is drained (in-flight work finishes, up to ``reload_drain_s``) before it stops.
A version that fails to load leaves the old one serving; the refusal is logged, kept in the
entry's ``error`` and not retried until its files change.

The registry never branches on a model's kind: the composition root hands it one
:class:`~rnnserve.server.serving.runner.ServingKind` per kind, whose factory makes the model's runner.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from rnnserve.models import ModelKind
from rnnserve.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    LoadedModel,
    clean_text,
    list_model_dirs,
    load_model,
    resolve_inside,
    select_version,
    validate_name,
    version_dir,
)
from rnnserve.server.errors import (
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    NoDefaultModelError,
)
from rnnserve.server.execution.devices import DaemonWorker, DeviceExecutors, resolve_device
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.catalog import describe
from rnnserve.server.serving.runner import R, Runner, ServingKind, ServingModel
from rnnserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

DRAIN_POLL_S = 0.02


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(eq=False)
class ModelEntry:
    """A model of the repository and how it stands (the version it serves now)."""

    name: str
    state: ModelState = ModelState.LOADING
    version: int = 0
    kind: ModelKind | None = None  # known once a version has loaded
    error: str = ""  # why loading failed, or why a newer version was refused while this serves
    device: str = ""
    serving: ServingModel[Any] | None = None  # the version that serves now (switched in one step)
    pinned: bool = False  # an admin LoadModel chose this version: polling leaves it alone
    refused: tuple[int, str] | None = None  # (version, files fingerprint) that failed to load

    @property
    def loaded(self) -> LoadedModel | None:
        return self.serving.loaded if self.serving is not None else None

    @property
    def runner(self) -> Runner | None:
        return self.serving.runner if self.serving is not None else None


@dataclass(frozen=True)
class SwapResult:
    """What a load or reload did."""

    entry: ModelEntry
    previous_version: int  # 0 when nothing served before
    sessions_dropped: int


def fingerprint(vdir: Path) -> str:
    """Sizes and modification times of a version's files: changes when anything is rewritten."""
    parts = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            st = (vdir / name).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "/".join(parts)


class ModelRegistry:
    """Owns every model: what is in the repository, what is loaded, and their engines."""

    def __init__(self, settings: ServerSettings, metrics: Metrics,
                 kinds: Sequence[ServingKind[Any]],
                 on_change: Callable[[], None] | None = None,
                 on_retire: Callable[[str, int], int] | None = None,
                 on_device_lost: Callable[[BaseException], None] | None = None) -> None:
        """``kinds``: how to serve each kind of model (a model of a kind not among them fails
        to load); ``on_change`` runs after any readiness change; ``on_retire(name, version)``
        when a version stops serving (it drops that version's sessions and returns how many);
        ``on_device_lost(error)`` is handed to every runner that reports a lost device (one
        with an ``on_device_lost`` attribute): it runs on the loop when the device context
        cannot be trusted any more."""
        self._settings = settings
        self._kinds: dict[ModelKind, ServingKind[Any]] = {k.kind: k for k in kinds}
        self._metrics = metrics
        self._on_change = on_change or (lambda: None)
        self._on_retire = on_retire or (lambda name, version: 0)
        self._on_device_lost = on_device_lost
        self._entries: dict[str, ModelEntry] = {}
        self._info_labels: dict[str, tuple[str, ...]] = {}
        self._unloaded: set[str] = set()  # unloaded by an admin: polling leaves them alone
        self._executors = DeviceExecutors()
        self._defaults: dict[str, str] = {}  # kind -> the default pinned when it first served
        self._loader = DaemonWorker("rnnserve-loader")
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
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
            self._new_entry(name)
        self._on_change()
        async with self._lock:
            for name, model_dir in found:
                try:
                    await self._swap_in(name, model_dir, None)
                except ModelLoadError:
                    pass  # recorded in the entry
        self._on_change()
        ready = [e.name for e in self._entries.values() if e.state is ModelState.READY]
        logger.info("models ready: %s", ", ".join(ready) or "none")
        for kind, name in sorted(self._defaults.items()):
            same = [e.name for e in self.entries() if e.kind == kind]
            if len(same) > 1 and not self._settings.default_model(kind):
                logger.warning("%d %s models and no default configured: %s serves requests "
                               "that name no model (set %s to choose)", len(same), kind, name,
                               self._settings.default_model_field(kind))

    async def load(self, name: str, version: int = 0) -> SwapResult:
        """Serve ``version`` of ``name`` (0: its highest) in place of what serves now.

        A version asked for by number is pinned: polling will not move the model off it.
        """
        async with self._lock:
            model_dir = self._model_dir(name)
            self._unloaded.discard(name)
            return await self._swap_in(name, model_dir, version or None, pin=bool(version))

    async def reload(self, name: str) -> SwapResult:
        """Re-read the model's directory and serve its highest version (unpinning it)."""
        async with self._lock:
            model_dir = self._model_dir(name)
            self._unloaded.discard(name)
            return await self._swap_in(name, model_dir, None)

    async def unload(self, name: str) -> tuple[int, int]:
        """Stop serving a model; returns (the version it served, sessions dropped)."""
        async with self._lock:
            entry = self.entry(name)
            del self._entries[name]
            self._unloaded.add(name)
            self._metrics.model_ready.remove(name)
            labels = self._info_labels.pop(name, None)
            if labels is not None:
                self._metrics.model_info.remove(*labels)
            dropped = self._on_retire(name, entry.version) if entry.loaded is not None else 0
            self._retire(entry.runner)
            if self._defaults.get(entry.kind) == name:
                del self._defaults[entry.kind]
                successor = self.default_name(entry.kind)
                if successor:
                    self._defaults[entry.kind] = successor
                logger.warning("default %s model %s unloaded; the default is now %s",
                               entry.kind, name, successor or "none")
            self._on_change()
            logger.info("model %s version %d unloaded (%d sessions dropped)",
                        name, entry.version, dropped)
            return entry.version, dropped

    async def poll(self) -> None:
        """Pick up new models and higher versions dropped into the repository."""
        async with self._lock:
            try:
                found = list_model_dirs(self._settings.model_repository)
            except (CheckpointError, OSError) as err:
                logger.error("polling %s: %s", self._settings.model_repository, err)
                return
            for name, model_dir in found:
                entry = self._entries.get(name)
                if name in self._unloaded or (entry is not None and entry.pinned):
                    continue
                try:
                    version = select_version(model_dir)
                    mark = (version, fingerprint(version_dir(model_dir, version)))
                except (CheckpointError, OSError):
                    continue
                if entry is not None and (
                    entry.refused == mark
                    or (entry.state is ModelState.READY and version <= entry.version)
                ):
                    continue
                logger.info("model %s: version %d found in the repository", name, version)
                try:
                    await self._swap_in(name, model_dir, version)
                except ModelLoadError:
                    pass  # logged and recorded; the old version serves on

    def _model_dir(self, name: str) -> Path:
        try:
            validate_name(name)
            repo = self._settings.model_repository
            model_dir = resolve_inside(repo, Path(repo) / name)
        except CheckpointError as err:
            raise InvalidArgumentError("name", self._for_clients(str(err))) from None
        if not model_dir.is_dir():
            raise ModelNotFoundError(name, list(self._entries))
        return model_dir

    def _new_entry(self, name: str) -> ModelEntry:
        entry = ModelEntry(name=name, device=str(self.device))
        self._entries[name] = entry
        self._metrics.model_ready.labels(name).set(0)
        return entry

    async def _swap_in(self, name: str, model_dir: Path, version: int | None,
                       pin: bool = False) -> SwapResult:
        """Load a version beside what serves, then switch to it (the caller holds the lock)."""
        entry = self._entries.get(name) or self._new_entry(name)
        wanted, mark = version or 0, None
        try:
            wanted = version if version is not None else select_version(model_dir)
            vdir = version_dir(model_dir, wanted)
            mark = (wanted, fingerprint(vdir))
            loaded = await self._loader.run(
                load_model, vdir, self.device,
                self._settings.max_checkpoint_bytes, self._settings.model_repository,
            )
            runner = await self._start_runner(name, loaded)
        except Exception as err:  # noqa: BLE001 - any failure is the model's, not the server's
            known = isinstance(err, CheckpointError | OSError | ValueError)
            reason = self._for_clients(str(err) if known else f"{type(err).__name__}: {err}")
            self._refuse(entry, wanted, mark, reason, log_trace=not known)
            serving = entry.version if entry.state is ModelState.READY else 0
            raise ModelLoadError(name, wanted, reason, serving) from None
        previous, old_runner = (entry.version if entry.loaded else 0), entry.runner
        self._install(entry, loaded, runner, pin)
        dropped = self._on_retire(name, previous) if previous else 0
        self._retire(old_runner)
        self._on_change()
        if previous:
            logger.info("model %s: version %d serves in place of %d (%d sessions dropped)",
                        name, entry.version, previous, dropped)
        return SwapResult(entry, previous, dropped)

    def _for_clients(self, text: str) -> str:
        """A refusal as clients may see it: files named relative to the model repository (never
        the server's absolute paths), one line, no control characters."""
        root = str(Path(self._settings.model_repository).resolve())
        text = text.replace(root + os.sep, "").replace(root, "<model repository>")
        return clean_text(text)

    async def _start_runner(self, name: str, loaded: LoadedModel) -> Runner:
        serving = self._kinds.get(loaded.kind)
        if serving is None:
            raise ValueError(f"this server does not serve {loaded.kind} models")
        executor = self._executors.for_device(self.device)
        if hasattr(loaded.module, "batch_invariant"):  # char LMs and classifiers
            loaded.module.batch_invariant = self._settings.batch_invariant
        runner = serving.make_runner(loaded, name, executor, self._metrics, self._settings)
        if hasattr(runner, "on_device_lost"):  # a runner that can tell a lost device
            runner.on_device_lost = self._on_device_lost
        warm_up = getattr(runner, "warm_up", None)
        if warm_up is not None:  # on the loading thread, as the load: SIGTERM never waits for it
            await self._loader.run(warm_up)
        await runner.start()
        return runner

    def _refuse(self, entry: ModelEntry, version: int, mark: tuple[int, str] | None,
                reason: str, log_trace: bool) -> None:
        entry.refused = mark
        if entry.state is ModelState.READY:
            entry.error = (f"version {version} was refused (version {entry.version} keeps "
                           f"serving): {reason}")
            logger.error("model %s: version %d refused, version %d keeps serving: %s",
                         entry.name, version, entry.version, reason, exc_info=log_trace)
        else:
            entry.state, entry.error = ModelState.FAILED, reason
            logger.error("model %s failed to load: %s", entry.name, reason, exc_info=log_trace)
        self._on_change()

    def _install(self, entry: ModelEntry, loaded: LoadedModel, runner: Runner, pin: bool) -> None:
        """Switch the entry to the new version in one synchronous step."""
        entry.serving = ServingModel(entry.name, loaded.version, loaded, runner)
        entry.version, entry.kind = loaded.version, loaded.kind
        entry.state, entry.error, entry.refused, entry.pinned = ModelState.READY, "", None, pin
        if self._defaults.get(entry.kind) not in self._entries:
            self._defaults[entry.kind] = entry.name  # pinned: a model added later never moves it
        m = self._metrics
        m.model_ready.labels(entry.name).set(1)
        old = self._info_labels.pop(entry.name, None)
        if old is not None:
            m.model_info.remove(*old)
        labels = (entry.name, str(entry.version), entry.kind, entry.device, describe(loaded))
        m.model_info.labels(*labels).set(1)
        self._info_labels[entry.name] = labels

    # --- retiring old versions -----------------------------------------------------------------
    def _retire(self, runner: Runner | None) -> None:
        """Drain an old version's engine in the background, then stop it."""
        if runner is None:
            return
        task = asyncio.create_task(self._drain_and_stop(runner), name=f"retire:{runner.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_stop(self, runner: Runner) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.reload_drain_s
        try:
            while runner.pending and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            if runner.pending:
                logger.warning("model %s: stopping an old version with %d requests in flight",
                               runner.name, runner.pending)
        finally:
            await runner.stop()

    async def stop(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for entry in self._entries.values():
            if entry.runner is not None:
                await entry.runner.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executors.shutdown)

    async def wait_retired(self) -> None:
        """Wait until every old version has been drained and stopped (for tests and shutdown)."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    # --- lookup --------------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        return sorted(self._entries.values(), key=lambda e: e.name)

    def has(self, name: str) -> bool:
        """Whether a model called ``name`` is known (in any state)."""
        return name in self._entries

    def entry(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(name, list(self._entries))
        return entry

    def default_name(self, kind: ModelKind | None) -> str:
        """The default model of a kind: the configured one, else the one pinned when the kind
        first served (the first ready by name at start; a model added later never moves it;
        if it is unloaded, the first ready by name then), else the first of the kind by name."""
        if kind is None or kind not in self._kinds:
            return ""
        configured = self._settings.default_model(kind)
        if configured:
            return configured
        pinned = self._defaults.get(kind)
        if pinned in self._entries:
            return pinned
        candidates = [e for e in self.entries() if e.kind == kind]
        ready = [e for e in candidates if e.state is ModelState.READY]
        chosen = ready or candidates
        return chosen[0].name if chosen else ""

    def ready(self, name: str, serving: ServingKind[R]) -> ServingModel[R]:
        """The ready model ``name`` (or the default of the kind when empty), with its runner."""
        name = name or self.default_name(serving.kind)
        if not name:
            if any(e.state is ModelState.LOADING for e in self._entries.values()):
                raise ModelNotReadyError(f"<default {serving.what}>", "loading",
                                         "the repository's models are still loading")
            raise NoDefaultModelError(serving.what, list(self._entries))
        entry = self.entry(name)
        if entry.state is not ModelState.READY or entry.serving is None:
            raise ModelNotReadyError(name, entry.state.value, entry.error)
        if entry.kind != serving.kind:
            raise InvalidArgumentError(
                "model", f"{name!r} is a {entry.kind} model, not a {serving.what}")
        return entry.serving

    def service_ready(self, kind: ModelKind) -> bool:
        """Whether the default model of a kind serves (drives the service's health)."""
        name = self.default_name(kind)
        entry = self._entries.get(name)
        return entry is not None and entry.state is ModelState.READY
