"""Regenerate the committed protobuf/gRPC stubs: ``python -m rnnserve.v1.regenerate [--check]``.

Stubs are generated with ``-Iproto`` so that their imports read ``from rnnserve.v1 import ...``.
``--check`` regenerates into a temporary folder and exits 1 when the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

V1_DIR = Path(__file__).resolve().parent
PROTO_ROOT = V1_DIR.parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto in this folder, writing under ``out_root/rnnserve/v1``."""
    from grpc_tools import protoc  # dev dependency, imported lazily

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in V1_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    out_dir = out_root / "rnnserve" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def stale_files() -> list[str]:
    """Names of generated files whose committed copy differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = {p.name for p in V1_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
        stale = [p.name for p in fresh if not filecmp.cmp(p, V1_DIR / p.name, shallow=False)
                 if (V1_DIR / p.name).exists()]
        stale += sorted({p.name for p in fresh} ^ committed)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, V1_DIR / path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
