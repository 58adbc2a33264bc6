"""Issue 9 I: what a new user meets first — make test, the quick start, --help, the CLI."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from conftest import test_settings as server_settings
from rnnserve.client._render import models_table
from rnnserve.client._types import ModelInfo
from rnnserve.models.training.cli import build_parser as train_parser
from rnnserve.server.app import build_server
from rnnserve.server.main import build_parser as serve_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _target_line(makefile: str, target: str) -> str:
    match = re.search(rf"^{target}:(.*)$", makefile, re.M)
    assert match, target
    return match.group(1)


def test_make_test_installs_what_its_tests_need_and_ci_only_adds_apt():
    makefile = (ROOT / "Makefile").read_text()
    assert "node_modules/.bin/buf" in _target_line(makefile, "test")
    assert re.search(r"^node_modules/\.bin/buf:.*package", makefile, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "npm install" not in ci and "npm ci" not in ci
    assert "make test" in ci


def test_make_setup_and_serve_say_what_they_do():
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("$(STAMP): pyproject.toml", 1)[1].split("\n\n", 1)[0]
    assert "echo" in setup  # progress, not ~40 s of silence
    assert "$(SERVE_ARGS)" in makefile.split("serve: setup", 1)[1].split("\n\n", 1)[0]
    assert "SERVE_ARGS=" in README and ".venv/bin/" in README


async def test_a_taken_metrics_port_names_the_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = build_server(server_settings(metrics_port=port))
        with pytest.raises(OSError) as caught:
            await server.start()
        await server.stop(grace=0)
    assert str(port) in str(caught.value) and "metrics" in str(caught.value)


def test_serve_help_shows_one_default_per_option():
    text = serve_parser().format_help()
    assert "(default: None)" not in text
    assert "default: 50051" in text


def test_train_help_lists_choices_and_no_markup():
    parser = train_parser()
    top = parser.format_help()
    assert "``" not in top
    charlm = parser._subparsers._group_actions[0].choices["charlm"].format_help()
    assert re.search(r"--cell \{rnn,gru,lstm\}", charlm), charlm
    assert "``" not in charlm


def test_models_table_prints_counts_as_integers():
    info = ModelInfo(name="timemachine", version=1, kind="charlm", state="ready", error="",
                     device="cpu", is_default=True, architecture="lstm 2x256", vocab_size=28,
                     parameters=1, metrics={"test_chars": 17060.0, "perplexity": 4.5678912})
    text = models_table([info])
    assert "test_chars=17060" in text and "e+0" not in text and "perplexity=4.568" in text


def test_readme_documents_the_first_run_facts():
    assert "predict_ch8(prefix, n, net, vocab, device)" in README
    assert "<unk>" in README and "version" in README
    assert re.search(r"`version`.{0,40}(equal|match).{0,20}folder", README, re.S)
