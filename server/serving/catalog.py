"""What ModelService (ListModels, GetModel) says about a model: a protobuf-free description built
from a registry entry and the kind's own words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rnnserve.models import kind_spec
from rnnserve.models.checkpoint import LoadedModel
from rnnserve.server.serving.requests import ModelDescription

if TYPE_CHECKING:  # the registry imports describe() from here
    from rnnserve.server.serving.registry import ModelEntry


def describe(loaded: LoadedModel) -> str:
    """A short architecture summary, such as 'lstm 2x256' (the kind's words)."""
    return kind_spec(loaded.kind).describe(loaded.config)


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
        kind=entry.kind.value if entry.kind is not None else "",
        state=entry.state.value,
        error=entry.error,
        device=entry.device,
        is_default=is_default,
        architecture=describe(loaded) if loaded else "",
        vocab_size=kind_spec(loaded.kind).vocab_size(loaded.config) if loaded else 0,
        parameters=loaded.num_parameters if loaded else 0,
        metrics=numeric_metrics(loaded.config) if loaded else {},
    )
