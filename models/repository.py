"""The model repository layout: ``<repo>/<name>/<version>/{config.json, model.pt}``.

Names match ``NAME_RE``; versions are numeric directories (the highest serves unless pinned);
every path is resolved and must stay inside its repository / version directory (no symlink
escapes). Nothing here reads a config or a tensor: that is :mod:`.checkpoint`. Every refusal is
a :class:`CheckpointError` whose message names the path and the problem.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_RE)
VERSION_RE = re.compile(r"^[0-9]{1,9}$")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


class CheckpointError(Exception):
    """A model directory, config or weights file was refused; the message says which and why."""


# ---------------------------------------------------------------------------- names and paths
def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`CheckpointError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CheckpointError(f"invalid model name {name!r}: must match {NAME_RE}")
    return name


def resolve_inside(root: Path, path: Path) -> Path:
    """``path`` fully resolved (symlinks followed); refuses anything outside ``root``."""
    root_r = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != root_r and root_r not in resolved.parents:
        raise CheckpointError(f"{path}: resolves to {resolved}, outside {root_r}")
    return resolved


def list_model_dirs(repo: Path) -> list[tuple[str, Path]]:
    """``(name, resolved dir)`` for each valid model directory in ``repo``, sorted by name.

    Entries with an invalid name, that are not directories, or that resolve outside the
    repository are skipped with a warning (one bad entry never hides the others).
    """
    repo_r = Path(repo).resolve()
    if not repo_r.is_dir():
        raise CheckpointError(f"{repo}: model repository is not a directory")
    found = []
    for entry in sorted(repo_r.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            validate_name(entry.name)
            resolved = resolve_inside(repo_r, entry)
        except CheckpointError as err:
            logger.warning("skipping %s: %s", entry, err)
            continue
        if resolved.is_dir():
            found.append((entry.name, resolved))
    return found


def list_versions(model_dir: Path) -> list[int]:
    """Numeric version directories of a model, ascending."""
    model_r = Path(model_dir).resolve()
    versions = []
    for entry in model_r.iterdir():
        if VERSION_RE.fullmatch(entry.name) and entry.is_dir():
            try:
                resolve_inside(model_r, entry)
            except CheckpointError as err:
                logger.warning("skipping %s: %s", entry, err)
                continue
            versions.append(int(entry.name))
    return sorted(versions)


def select_version(model_dir: Path, config_pin: int | None = None) -> int:
    """The highest numeric version directory, or ``config_pin`` if given (it must exist)."""
    versions = list_versions(model_dir)
    if config_pin is not None:
        if config_pin not in versions:
            raise CheckpointError(
                f"{model_dir}: pinned version {config_pin} not found (have {versions})"
            )
        return config_pin
    if not versions:
        raise CheckpointError(f"{model_dir}: no numeric version directories")
    return versions[-1]


def version_dir(model_dir: Path, version: int) -> Path:
    """The resolved directory of ``version`` (must stay inside ``model_dir``)."""
    return resolve_inside(Path(model_dir), Path(model_dir) / str(int(version)))
