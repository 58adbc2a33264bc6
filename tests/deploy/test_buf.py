"""buf on the protobuf API: lint (buf's STANDARD rules) and breaking-change detection.

buf is the pinned @bufbuild/buf of package-lock.json (``npm install --no-save``). Which git ref
``buf breaking`` compares against (``against_ref``), first that exists:

1. ``$BUF_AGAINST`` (any git ref: set it in CI for a pull request's base branch);
2. the newest release tag ``v*``: once a version is released, its API is the promise;
3. on a branch other than main: its merge base with main;
4. otherwise ``HEAD``: the working tree must not break the last commit (before the first
   release the API may still change between commits, so comparing with ``HEAD~1`` would fail
   the commit right after every deliberate pre-release change; a fresh CI clone may not even
   have ``HEAD~1``).

A separate test proves the check bites, on a copy of the API with a field removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest


def git(deploy: Any, *args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    result = deploy.run(["git", *args], timeout=30)
    return result.stdout.strip() if result.returncode == 0 else None


def against_ref(deploy: Any) -> str:
    if os.environ.get("BUF_AGAINST"):
        return os.environ["BUF_AGAINST"]
    if git(deploy, "rev-parse", "--is-inside-work-tree") != "true":
        pytest.skip("not a git checkout: nothing to compare the API with")
    tag = git(deploy, "describe", "--tags", "--abbrev=0", "--match", "v[0-9]*", "HEAD")
    if tag:
        return tag
    branch = git(deploy, "rev-parse", "--abbrev-ref", "HEAD")
    for main in ("main", "origin/main"):
        if branch not in (None, "HEAD", "main") and git(deploy, "rev-parse", "--verify", main):
            base = git(deploy, "merge-base", main, "HEAD")
            if base:
                return base
    return "HEAD"


def test_buf_lint(deploy: Any) -> None:
    buf = deploy.find_tool("buf")
    result = deploy.run([buf, "lint", "proto"])
    assert result.returncode == 0, deploy.output(result)


def test_buf_breaking_against_the_base(deploy: Any) -> None:
    buf = deploy.find_tool("buf")
    ref = against_ref(deploy)
    result = deploy.run([buf, "breaking", "proto", "--against",
                         f".git#ref={ref},subdir=proto"], timeout=120)
    assert result.returncode == 0, f"breaking change against {ref}:\n{deploy.output(result)}"


def test_buf_breaking_catches_a_removed_field(deploy: Any, tmp_path: Path) -> None:
    """The gate is not vacuous: removing a field from a copy of the API fails it."""
    buf = deploy.find_tool("buf")
    changed = tmp_path / "proto"
    shutil.copytree(deploy.ROOT / "proto", changed,
                    ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    generation = changed / "rnnserve" / "v1" / "generation.proto"
    text = generation.read_text()
    assert "  uint64 seed = 9;\n" in text
    generation.write_text(text.replace("  uint64 seed = 9;\n", ""))
    result = deploy.run([buf, "breaking", str(changed), "--against", str(deploy.ROOT / "proto")])
    assert result.returncode != 0, deploy.output(result)
    assert "seed" in result.stdout, deploy.output(result)
