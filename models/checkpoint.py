"""Checkpoints: config.json validation, the safe weights loader, and saving a model version.

``config.json`` describes the kind (:class:`~.kinds.ModelKind`), the architecture and the
kind's assets (vocabulary, text normalisation / tokenizer, input scaling) and the training run
with its held-out metrics; it is validated against ``config.schema.json`` plus the kind's own
cross-field checks *before* any tensor is read. ``model.pt`` is a plain ``state_dict`` read with
``torch.load(..., weights_only=True)``: only a dict of dense tensors whose keys and shapes match
the configured architecture is accepted. Files have size limits; paths are checked by
:mod:`.repository`. Everything kind-specific is asked of :func:`~.kinds.kind_spec`. Every
refusal is a :class:`CheckpointError` whose message names the file and the mismatch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .kinds import DEFAULT_LABELS, ModelKind, kind_spec
from .repository import (
    CONFIG_FILE,
    NAME_RE,
    VERSION_RE,
    WEIGHTS_FILE,
    CheckpointError,
    list_model_dirs,
    list_versions,
    resolve_inside,
    select_version,
    validate_name,
    version_dir,
)

__all__ = [  # the repository names are re-exported: callers import them from here too
    "CONFIG_FILE", "DEFAULT_LABELS", "DEFAULT_MAX_BYTES", "MAX_CONFIG_BYTES", "NAME_RE",
    "WEIGHTS_FILE", "CheckpointError", "LoadedModel", "ModelSpec", "build_module", "check_archive",
    "clean_text",
    "config_schema", "expected_shapes", "find_models", "list_model_dirs", "list_versions",
    "load_model", "read_config", "read_state_dict", "resolve_inside", "save_model",
    "select_version", "validate_config", "validate_name", "version_dir",
]

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 16 * 2**20
DEFAULT_MAX_BYTES = 512 * 2**20
MAX_SCHEMA_ERRORS = 100
MAX_FLOAT_BYTES = 8  # float64, the widest dtype a state_dict entry may have
ARCHIVE_SLACK_BYTES = 2**20  # data.pkl, version and byteorder records of a torch.save archive
ARCHIVE_BYTES_PER_KEY = 4096


@dataclass(frozen=True)
class ModelSpec:
    """A model version found in a repository, with its validated config."""

    name: str
    version: int
    kind: ModelKind
    path: Path
    config: dict


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: module in eval mode on ``device`` plus its kind's assets.

    ``assets`` is the kind's frozen value (:mod:`.kinds`): ``vocab`` and ``normalization`` for
    a charlm; ``vocab``, ``tokenizer`` and ``labels`` for a classifier; ``features`` and
    ``scaling`` for a forecaster. They read as attributes of the model too (``loaded.vocab``).
    """

    name: str
    version: int
    kind: ModelKind
    config: dict
    module: nn.Module
    assets: Any
    device: torch.device
    path: Path | None = None
    num_parameters: int = field(default=0)

    def __getattr__(self, name: str) -> Any:
        if name == "assets":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        try:
            return getattr(self.assets, name)
        except AttributeError:
            raise AttributeError(
                f"a {self.kind} model has no {name!r} (its assets: {type(self.assets).__name__})"
            ) from None


def find_models(repo: Path) -> list[ModelSpec]:
    """The highest valid version of every model in ``repo`` (invalid ones logged and skipped)."""
    specs = []
    for name, mdir in list_model_dirs(repo):
        try:
            version = select_version(mdir)
            vdir = version_dir(mdir, version)
            cfg = read_config(vdir)
        except CheckpointError as err:
            logger.warning("skipping model %s: %s", name, err)
            continue
        specs.append(ModelSpec(name, version, ModelKind(cfg["kind"]), vdir, cfg))
    return specs


# ---------------------------------------------------------------------------- config
@cache
def config_schema() -> dict:
    """The JSON Schema of config.json (``models/config.schema.json``)."""
    text = resources.files(__package__).joinpath("config.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_config(cfg: Any, source: str = "config.json") -> dict:
    """Schema + cross-field validation; returns ``cfg`` or raises :class:`CheckpointError`."""
    import jsonschema  # runtime dependency; imported lazily to keep `import rnnserve.models` light

    _check_strings(cfg, source)
    validator = jsonschema.Draft202012Validator(config_schema())
    # at most MAX_SCHEMA_ERRORS are looked at: a million bad entries cost one pass, not a sort
    errors = sorted(itertools.islice(validator.iter_errors(cfg), MAX_SCHEMA_ERRORS),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise CheckpointError(f"{source}: invalid config at {where}: {err.message}")
    vocab = cfg.get("vocab")  # the kinds with a vocabulary (the schema says which)
    first_seen: dict[str, int] = {}
    for index, token in enumerate(vocab or ()):  # uniqueness in one pass (no uniqueItems: O(n²))
        if token in first_seen:
            raise CheckpointError(
                f"{source}: invalid config at vocab/{index}: {_echo(token)} is non-unique "
                f"(duplicates vocab/{first_seen[token]})"
            )
        first_seen[token] = index
    if vocab is not None and cfg["architecture"]["vocab_size"] != len(vocab):
        raise CheckpointError(
            f"{source}: architecture.vocab_size is {cfg['architecture']['vocab_size']} "
            f"but vocab has {len(vocab)} tokens"
        )
    try:
        kind_spec(cfg["kind"]).check(cfg)
    except (TypeError, ValueError, re.error) as err:
        raise CheckpointError(f"{source}: invalid config: {err}") from None
    return cfg


def _check_strings(node: Any, source: str, where: str = "") -> None:
    """Refuse any string (key or value) that is not well-formed Unicode, e.g. half a surrogate
    pair written as a JSON escape ("\\ud83d"): it loads, but can never be encoded in a reply."""
    stack: list[tuple[Any, str]] = [(node, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise CheckpointError(
                    f"{source}: invalid config at {path or '<root>'}: {_echo(item)} is not a "
                    "well-formed string (a lone surrogate code point)"
                ) from None
        elif isinstance(item, dict):
            for key, value in item.items():
                stack.append((key, path))
                stack.append((value, f"{path}/{key}" if path else str(key)))
        elif isinstance(item, list):
            stack.extend((value, f"{path}/{i}") for i, value in enumerate(item))


def _echo(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def read_config(version_dir: Path) -> dict:
    """Read and validate ``<version_dir>/config.json`` (no tensor is touched).

    If the config carries ``name``/``version`` they must match the directory names.
    """
    vdir = Path(version_dir).resolve()
    path = vdir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    path = resolve_inside(vdir, path)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, over the {MAX_CONFIG_BYTES} byte limit")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from None
    validate_config(cfg, str(path))
    if "name" in cfg and cfg["name"] != vdir.parent.name:
        raise CheckpointError(
            f"{path}: name {cfg['name']!r} does not match directory {vdir.parent.name!r}"
        )
    if "version" in cfg and VERSION_RE.fullmatch(vdir.name) and cfg["version"] != int(vdir.name):
        raise CheckpointError(
            f"{path}: version {cfg['version']} does not match directory {vdir.name!r}"
        )
    return cfg


def build_module(cfg: dict) -> nn.Module:
    """A freshly initialised module for a validated config."""
    return kind_spec(cfg["kind"]).build(cfg)


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape for a validated config (built on the meta device, no memory)."""
    with torch.device("meta"):
        module = build_module(cfg)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- weights
def _fmt(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def read_state_dict(
    path: Path, expected: dict[str, tuple[int, ...]], max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, torch.Tensor]:
    """Load and check a weights file against ``expected`` shapes (weights_only, dense only)."""
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size} bytes, over the {max_bytes} byte limit")
    check_archive(path, expected)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused: {_unpickling_reason(str(err))}") from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
        ImportError,
    ) as err:
        raise CheckpointError(
            f"{path}: unreadable or truncated weights file: {_first_line(err)}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}"
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: non-string key {key!r}")
        if type(value) not in (torch.Tensor, nn.Parameter):
            raise CheckpointError(f"{path}: key {key!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.is_nested:
            raise CheckpointError(
                f"{path}: key {key!r} is not a dense tensor (layout {value.layout})"
            )
        if not value.is_floating_point():
            raise CheckpointError(
                f"{path}: key {key!r} has dtype {value.dtype}, expected floating point"
            )
    if obj and all(k.startswith("module.") for k in obj) and not any(
            k.startswith("module.") for k in expected):
        raise CheckpointError(
            f"{path}: every key starts with 'module.' (e.g. {next(iter(obj))!r}): this looks "
            "like a state_dict saved from nn.DataParallel or DistributedDataParallel. Save "
            "net.module.state_dict() instead, or strip the prefix: "
            "{k.removeprefix('module.'): v for k, v in state.items()}"
        )
    missing = [k for k in expected if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path}: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = [k for k in obj if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for key, shape in expected.items():
        got = tuple(obj[key].shape)
        if got != shape:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {_fmt(got)}, config expects {_fmt(shape)}"
            )
    for key, value in obj.items():
        if not bool(torch.isfinite(value).all()):
            bad = "NaN" if bool(torch.isnan(value).any()) else "inf"
            raise CheckpointError(
                f"{path}: key {key!r} holds {bad} values; a model with non-finite weights "
                "cannot give meaningful output"
            )
    return obj


def check_archive(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Bound what ``torch.load`` would read, from the archive's directory alone.

    A ``torch.save`` file is a zip archive of *stored* (uncompressed) entries. A compressed
    entry could inflate far past the file's size inside ``torch.load``, so it is refused; the
    entries' uncompressed sizes must fit what the architecture needs (its parameters at 8 bytes
    each at most, plus the pickle's small records). A file in the legacy (non-zip) format is
    read as it is, so its own size is held to the same bound.
    """
    budget = (MAX_FLOAT_BYTES * sum(_numel(s) for s in expected.values())
              + ARCHIVE_BYTES_PER_KEY * len(expected) + ARCHIVE_SLACK_BYTES)
    if not zipfile.is_zipfile(path):
        size = path.stat().st_size
        if size > budget:
            raise CheckpointError(
                f"{path}: {size} bytes, more than the {budget} bytes the configured "
                "architecture can need"
            )
        return
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable weights archive: {_first_line(err)}") from None
    if len(entries) > 2 * len(expected) + 16:
        raise CheckpointError(
            f"{path}: {len(entries)} archive entries, more than a state_dict of "
            f"{len(expected)} tensors has"
        )
    total = 0
    for info in entries:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path}: archive entry {info.filename!r} is compressed; rnnserve reads only "
                "torch.save's uncompressed archives (a compressed entry could inflate without "
                "bound)"
            )
        total += info.file_size
    if total > budget:
        raise CheckpointError(
            f"{path}: archive entries hold {total} bytes uncompressed, more than the {budget} "
            "bytes the configured architecture can need"
        )


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def clean_text(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (newlines become ' ')."""
    return _CONTROL.sub("", _ANSI.sub("", text).replace("\n", " ")).strip()


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return clean_text(text.splitlines()[0]) if text else type(err).__name__


def _unpickling_reason(message: str) -> str:
    """Why a weights_only load refused a file, in one line that names the real cause."""
    found = _UNSUPPORTED_GLOBAL.search(_ANSI.sub("", message))
    if found:
        return (f"the file pickles a whole object (unsupported global {found.group(1)}), not a "
                "state_dict of tensors; rnnserve never unpickles objects. Save the weights "
                "with torch.save(net.state_dict(), 'model.pt') instead of torch.save(net)")
    first = _ANSI.sub("", message).strip().splitlines()
    return ("holds pickled objects other than tensors (weights_only load): "
            + (clean_text(first[0]) if first else "UnpicklingError"))


def load_model(
    version_dir: Path,
    device: str | torch.device = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
    repo: Path | None = None,
) -> LoadedModel:
    """Load a version directory into a :class:`LoadedModel` (see module docstring for the checks).

    If ``repo`` is given, ``version_dir`` must resolve inside it.
    """
    vdir = (
        resolve_inside(Path(repo), Path(version_dir))
        if repo is not None
        else Path(version_dir).resolve()
    )
    if not vdir.is_dir():
        raise CheckpointError(f"{version_dir}: not a directory")
    cfg = read_config(vdir)
    weights = vdir / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    weights = resolve_inside(vdir, weights)
    expected = expected_shapes(cfg)
    expected_bytes = sum(4 * _numel(s) for s in expected.values())
    if expected_bytes > max_bytes:
        raise CheckpointError(
            f"{vdir / CONFIG_FILE}: architecture needs {expected_bytes} bytes of "
            f"weights, over the {max_bytes} byte limit"
        )
    state = read_state_dict(weights, expected, max_bytes)
    module = build_module(cfg)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:  # pragma: no cover - keys and shapes were checked above
        raise CheckpointError(f"{weights}: {err}") from None
    dev = torch.device(device)
    module = module.to(dev).eval()
    name = cfg.get("name", vdir.parent.name)
    version = cfg.get("version", int(vdir.name) if VERSION_RE.fullmatch(vdir.name) else 0)
    logger.info("loaded %s/%s (%s) from %s on %s", name, version, cfg["kind"], vdir, dev)
    return LoadedModel(
        name=name,
        version=version,
        kind=ModelKind(cfg["kind"]),
        config=cfg,
        module=module,
        assets=kind_spec(cfg["kind"]).assets(cfg),
        device=dev,
        path=vdir,
        num_parameters=sum(p.numel() for p in module.parameters()),
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def save_model(out_dir: Path, module: nn.Module, config: dict) -> None:
    """Write ``config.json`` + ``model.pt`` (plain CPU state_dict) in ``out_dir``, each atomically.

    The config is validated and the state_dict checked against it before anything is written.
    """
    out = Path(out_dir)
    validate_config(config, str(out / CONFIG_FILE))
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}
    expected = expected_shapes(config)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        diff = sorted(set(got.items()) ^ set(expected.items()))
        raise CheckpointError(f"{out / WEIGHTS_FILE}: module does not match config: {diff[:3]}")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / WEIGHTS_FILE, lambda f: torch.save(state, f))
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(out / CONFIG_FILE, lambda f: f.write(text.encode("utf-8")))
    logger.info("saved %s and %s in %s", CONFIG_FILE, WEIGHTS_FILE, out)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
