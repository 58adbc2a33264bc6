"""The import rules of DESIGN/STYLE, checked on the source with ``ast``.

1. Everything is imported under ``rnnserve``: no bare ``import server`` / ``from models ...``
   (those would only work by accident of the current directory or sys.path).
2. Protobuf stays in the RPC layer: inside ``rnnserve.server`` only ``server/rpc/*`` and the
   composition root ``server/app.py`` import the generated ``rnnserve.v1`` code.
3. The server's layers are folders and imports flow one way: protocol (``server/rpc/``) →
   serving logic (``server/serving/``) → execution (``server/execution/``) → ``rnnserve.models``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("server", "client", "models", "proto", "bench", "tests")
# The folders that are packages of ``rnnserve`` under another name. (bench/ is a folder of
# scripts run as ``python -m bench.<name>`` from the root; it may import itself as ``bench``.)
BARE = {"server", "models", "client", "proto"}


def python_files(*folders: str) -> list[Path]:
    files = []
    for folder in folders:
        base = ROOT / folder
        if base.is_dir():
            files += [p for p in base.rglob("*.py") if ".venv" not in p.parts]
    return sorted(files)


def absolute_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, including ones inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # ``from rnnserve import v1`` imports the package rnnserve.v1 as well
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_the_scan_sees_the_project():
    files = {p.relative_to(ROOT).as_posix() for p in python_files(*SCANNED)}
    assert {"server/app.py", "server/rpc/servicers.py", "client/cli.py",
            "models/charlm.py", "tests/conftest.py"} <= files


def test_no_bare_top_level_imports_of_project_folders():
    offenders = []
    for path in python_files(*SCANNED):
        for line, module in absolute_imports(path):
            if module.split(".")[0] in BARE:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not offenders, "import these as rnnserve.<package>:\n" + "\n".join(offenders)


def imports_protobuf(module: str) -> bool:
    return (module == "rnnserve.v1" or module.startswith("rnnserve.v1.")
            or module.endswith(("_pb2", "_pb2_grpc")) or module.startswith("google.protobuf"))


def test_only_the_rpc_layer_and_the_composition_root_import_protobuf():
    allowed = {"server/app.py"}
    offenders = []
    checked = 0
    for path in python_files("server"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("server/rpc/") or rel in allowed:
            continue
        checked += 1
        for line, module in absolute_imports(path):
            if imports_protobuf(module) and not module.startswith("grpc_health"):
                offenders.append(f"{rel}:{line}: {module}")
    assert checked >= 8, "the scan reached the server's domain modules"
    assert not offenders, "protobuf belongs in server/rpc/:\n" + "\n".join(offenders)


LAYERS = {"rpc": 2, "serving": 1, "execution": 0}
"""The server's layer folders, highest first: a module may import its own layer or lower ones."""


def server_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["rnnserve", "server"] and len(parts) > 2 and parts[2] in LAYERS:
        return parts[2]
    return None


def test_the_server_layers_are_folders_and_imports_flow_one_way():
    offenders = []
    seen = dict.fromkeys(LAYERS, 0)
    for path in python_files("server"):
        rel = path.relative_to(ROOT).as_posix().split("/")
        own = rel[1] if len(rel) > 2 and rel[1] in LAYERS else None
        if own is None:
            continue
        seen[own] += 1
        for line, module in absolute_imports(path):
            other = server_layer(module)
            if other is not None and LAYERS[other] > LAYERS[own]:
                offenders.append(f"{'/'.join(rel)}:{line}: {module} (a {own} module imports {other})")
    assert all(n >= 3 for n in seen.values()), f"the scan reached every layer: {seen}"
    assert not offenders, "imports flow rpc -> serving -> execution:\n" + "\n".join(offenders)


@pytest.mark.parametrize("module,layer", [
    ("rnnserve.server.execution.engine", "execution"),
    ("rnnserve.server.serving", "serving"),
    ("rnnserve.server.rpc.status", "rpc"),
    ("rnnserve.server.errors", None),
    ("rnnserve.models.charlm", None),
])
def test_the_layer_reader_itself(module, layer):
    assert server_layer(module) == layer


def test_models_never_import_grpc_or_asyncio():
    offenders = []
    for path in python_files("models"):
        for line, module in absolute_imports(path):
            if module.split(".")[0] in {"grpc", "grpc_health", "grpc_reflection", "asyncio"} \
                    or module.startswith(("rnnserve.server", "rnnserve.client", "rnnserve.v1")):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("source,bad", [
    ("import server", True),
    ("import models.charlm", True),
    ("from client import Client", True),
    ("from server.rpc import status", True),
    ("def f():\n    import models\n", True),
    ("from rnnserve.server import app", False),
    ("from . import _convert", False),
    ("import rnnserve.models", False),
    ("import serverless", False),
])
def test_the_checker_itself(tmp_path, source, bad):
    path = tmp_path / "example.py"
    path.write_text(source)
    flagged = any(m.split(".")[0] in BARE for _, m in absolute_imports(path))
    assert flagged is bad


# ------------------------------------------------------------------ a kind is one place
KINDS = {"charlm", "classifier", "forecast"}
RUNNER_CLASSES = {"GenerationEngine", "ClassificationBatcher", "ForecastEngine"}
# models/: only kinds.py knows what a kind means (training writes ModelKind.X.value)
KIND_MODULES = {"models/kinds.py"}


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def kind_branches(source: str) -> list[tuple[int, str]]:
    """Where code branches on a model's kind: a comparison with a kind's name or a
    ``ModelKind`` member, a module-level constant holding a kind's name, or an ``isinstance``
    check against a runner class."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if isinstance(operand, ast.Constant) and operand.value in KINDS:
                    found.append((node.lineno, f"compares with {operand.value!r}"))
                if isinstance(operand, ast.Attribute) and isinstance(operand.value, ast.Name) \
                        and operand.value.id == "ModelKind":
                    found.append((node.lineno, f"compares with ModelKind.{operand.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id == "isinstance" and len(node.args) == 2 \
                and _names(node.args[1]) & RUNNER_CLASSES:
            found.append((node.lineno, "isinstance on a runner class"))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant) \
                and node.value.value in KINDS:
            found.append((node.lineno, f"a constant for {node.value.value!r}"))
    return found


def test_nothing_outside_the_kind_modules_branches_on_a_kind():
    offenders = []
    files = python_files("server", "models")
    assert len(files) >= 25, "the scan reached the server and the models"
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in KIND_MODULES:
            continue
        offenders += [f"{rel}:{line}: {what}"
                      for line, what in kind_branches(path.read_text(encoding="utf-8"))]
    assert not offenders, ("a kind is one place (models/kinds.py and the kind's ServingKind in "
                           "server/<kind module>.py):\n" + "\n".join(offenders))


@pytest.mark.parametrize("source,flagged", [
    ("if cfg['kind'] == 'charlm':\n    pass\n", True),
    ("x = kind != ModelKind.FORECAST\n", True),
    ("CLASSIFIER = 'classifier'\n", True),
    ("ok = isinstance(runner, GenerationEngine | ClassificationBatcher)\n", True),
    ("GENERATION = ServingKind(ModelKind.CHARLM, 'generation model', f, g)\n", False),
    ("label = m.labels(name, 'forecast')\n", False),
    ("if entry.kind != serving.kind:\n    pass\n", False),
])
def test_the_kind_checker_itself(source, flagged):
    assert bool(kind_branches(source)) is flagged


def test_the_server_serves_every_kind_through_one_serving_kind():
    from rnnserve.models import ModelKind
    from rnnserve.server.app import SERVING_KINDS

    assert sorted(k.kind for k in SERVING_KINDS) == sorted(ModelKind)
