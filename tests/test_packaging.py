"""Packaging: committed stubs are fresh, and a built wheel installs only ``rnnserve`` and imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from rnnserve.v1 import regenerate

ROOT = Path(__file__).resolve().parent.parent


def test_committed_grpc_stubs_are_fresh():
    assert regenerate.stale_files() == [], "run `make proto` and commit the stubs"


def test_wheel_installs_only_the_rnnserve_namespace_and_imports(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("rnnserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"rnnserve"}
    for needed in ("rnnserve/v1/generation_pb2.py", "rnnserve/models/config.schema.json",
                   "rnnserve/server/rpc/servicers.py", "rnnserve/models/training/cli.py",
                   "rnnserve/client/cli.py"):
        assert needed in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    probe = ("import rnnserve.server.app, rnnserve.client.cli, rnnserve.models.training.cli, "
             "rnnserve.models.checkpoint as c, sys; "
             "assert rnnserve.server.app.__file__.startswith(sys.argv[1]), rnnserve.server.app.__file__; "
             "c.config_schema()")
    # the installed copy, not the editable checkout, must answer (the assert in the probe)
    subprocess.run([sys.executable, "-I", "-c",
                    f"import sys; sys.path.insert(0, {str(target)!r}); " + probe,
                    str(target)], check=True, timeout=120, cwd=tmp_path)
