"""The seam between the registry and the kinds of model it serves.

The registry loads, versions and places models without knowing what they do. Each kind's
serving module (``generation.py``, ``classification.py``, ``forecasting.py``) supplies one
:class:`ServingKind`: the :class:`~rnnserve.models.ModelKind` it serves, the words for its
errors, and the factory of its :class:`Runner` (the
engine or batcher that owns all execution of one loaded model). The composition root hands the
kinds to the registry; requests get a frozen :class:`ServingModel`: one version's model and
runner, typed by the kind that asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from rnnserve.models import LoadedModel, ModelKind
from rnnserve.server.metrics import Metrics
from rnnserve.server.settings import ServerSettings


class Runner(Protocol):
    """Owns all execution of one loaded model version (an engine or a batcher)."""

    name: str

    async def start(self) -> None:
        """Make the asyncio objects (on the running loop); work may be submitted after."""

    async def stop(self) -> None:
        """Refuse new work and fail what is left."""

    @property
    def pending(self) -> int:
        """Requests still using the runner (a version swap drains these before ``stop``)."""

    # optional: ``warm_up(self) -> None``, blocking, run once on the registry's loading thread
    # before ``start`` (a first call that prepares the model, e.g. traces it)


R = TypeVar("R", bound=Runner)

RunnerFactory = Callable[[LoadedModel, str, Executor, Metrics, ServerSettings], R]


@dataclass(frozen=True)
class ServingKind(Generic[R]):
    """What the server needs to serve one kind of model."""

    kind: ModelKind
    what: str  # the kind in words, for messages: "generation model", "classifier", ...
    make_runner: RunnerFactory[R]  # (its default model: ServerSettings.default_model(kind))


@dataclass(frozen=True)
class ServingModel(Generic[R]):
    """One ready model version and its runner: what a request works with, start to end."""

    name: str
    version: int
    loaded: LoadedModel
    runner: R
