"""rnnserve.models stays torch-only: no grpc (checked at runtime) and no asyncio/grpc imports."""

import ast
import subprocess
import sys
from pathlib import Path

import rnnserve.models

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

SCRIPT = """
import importlib, pkgutil, sys
import rnnserve.models as m
names = [i.name for i in pkgutil.walk_packages(m.__path__, "rnnserve.models.")]
for name in names:
    importlib.import_module(name)
from rnnserve.models.checkpoint import config_schema, validate_config
config_schema()
import jsonschema
assert "rnnserve.models.training.cli" in names and "rnnserve.models.checkpoint" in names, names
bad = sorted(k for k in sys.modules if k == "grpc" or k.startswith("grpc."))
assert not bad, bad
print("ok", len(names))
"""


def test_models_import_no_grpc():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_no_asyncio_or_grpc_import_statements():
    # torch itself imports asyncio, so the runtime check is for grpc; the source must not.
    for path in MODELS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"asyncio", "grpc", "google"}, (path, name)


def test_public_api_is_complete():
    for name in rnnserve.models.__all__:
        assert hasattr(rnnserve.models, name), name


def test_every_kind_is_one_spec():
    from rnnserve.models.checkpoint import config_schema
    from rnnserve.models.kinds import KindSpec, ModelKind, kind_spec

    specs = [kind_spec(kind) for kind in ModelKind]
    assert all(isinstance(s, KindSpec) and s.kind is kind
               for s, kind in zip(specs, ModelKind, strict=True))
    assert len({type(s) for s in specs}) == len(ModelKind)
    assert set(config_schema()["properties"]["kind"]["enum"]) == set(ModelKind)
