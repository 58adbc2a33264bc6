"""The ``rnnserve`` command line against the fake server."""

import io
import json
import sys
import types

import pytest
from rnnserve.client import cli


@pytest.fixture
def run(fake, capsys):
    """Run ``rnnserve ARGS --target <fake>``; returns (exit code, stdout, stderr)."""

    def run(*args: str, target: bool = True):
        argv = [*args, "--target", fake.target] if target else list(args)
        code = cli.main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_generate(run, fake):
    code, out, err = run("generate", "time traveller", "-n", "12")
    assert (code, out, err) == (0, "the time mac\n", "")
    assert fake.state.last("Generate").request.prefix == "time traveller"


def test_generate_passes_every_option(run, fake):
    code, _, _ = run(
        "generate", "x", "--model", "tm", "--temperature", "0.5", "--top-k", "3",
        "--top-p", "0.9", "--seed", "11", "--stop", "a", "--stop", "bc", "--timeout", "7",
    )
    assert code == 0
    call = fake.state.last("Generate")
    request = call.request
    assert (request.model, request.temperature, request.top_k, request.seed) == ("tm", 0.5, 3, 11)
    assert request.top_p == pytest.approx(0.9)
    assert list(request.stop) == ["a", "bc"]
    assert 5.0 < call.time_remaining <= 7.1


def test_generate_stream(run, fake):
    code, out, err = run("generate", "x", "-n", "10", "--stream")
    assert (code, out, err) == (0, "the time m\n", "")
    assert fake.state.methods() == ["GenerateStream"]


def test_generate_keep_session_reports_the_id_on_stderr(run):
    code, out, err = run("generate", "x", "-n", "3", "--keep-session")
    assert (code, out, err) == (0, "the\n", "session: s1\n")
    code, out, err = run("generate", "--session", "s1", "--keep-session", "-n", "3", "--stream")
    assert (code, out, err) == (0, "the\n", "session: s1\n")


def test_generate_json(run):
    code, out, _ = run("generate", "x", "-n", "3", "--keep-session", "--json")
    assert code == 0
    assert json.loads(out) == {
        "text": "the", "session_id": "s1", "finish_reason": "length", "prefix_tokens": 1,
        "generated_tokens": 3, "model": "timemachine", "model_version": 2,
    }


def test_generate_stream_json_lines(run):
    code, out, _ = run("generate", "x", "-n", "6", "--stream", "--json")
    assert code == 0
    chunks = [json.loads(line) for line in out.splitlines()]
    assert [c["text"] for c in chunks] == ["the ", "ti"]
    assert chunks[-1]["finish_reason"] == "length"


def test_classify_table(run, fake):
    code, out, err = run("classify", "a good film", "bad", "--model", "sentiment")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "LABEL     SCORE   TEXT",
        "positive  0.8750  a good film",
        "negative  0.1250  bad",
    ]
    assert fake.state.last("Classify").request.model == "sentiment"


def test_classify_explain(run):
    code, out, _ = run("classify", "so good", "--explain")
    assert code == 0
    assert out.splitlines()[2] == "    tokens: 'good' 0.500, 'so' 0.250"


def test_classify_from_file_and_stdin(run, fake, tmp_path, monkeypatch):
    path = tmp_path / "texts.txt"
    path.write_text("good one\n\nmeh\n", encoding="utf-8")
    code, _, _ = run("classify", "first", "--file", str(path))
    assert code == 0
    assert list(fake.state.last("Classify").request.texts) == ["first", "good one", "meh"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\ny\n"))
    code, out, _ = run("classify", "--file", "-", "--json")
    assert code == 0
    assert [r["text"] for r in json.loads(out)] == ["x", "y"]
    assert json.loads(out)[0]["label"] == "negative"


def test_classify_needs_texts(run, tmp_path):
    code, out, err = run("classify")
    assert (code, out) == (2, "")
    assert err.startswith("error: no texts given")
    code, _, err = run("classify", "--file", str(tmp_path / "missing.txt"))
    assert code == 2 and err.startswith("error: cannot read")


def test_models_table(run):
    code, out, _ = run("models")
    assert code == 0
    header, first, second, error = out.splitlines()
    assert header.split() == [
        "NAME", "VERSION", "KIND", "STATE", "DEVICE", "DEFAULT", "ARCHITECTURE", "METRICS"
    ]
    assert first.split() == [
        "timemachine", "2", "charlm", "ready", "cpu", "yes", "lstm", "2x256", "perplexity=1.25"
    ]
    assert second.split() == ["broken", "1", "classifier", "failed", "-", "-", "-"]
    assert error == "    error: model.pt: unexpected key 'x'"


def test_models_json(run):
    code, out, _ = run("models", "--json")
    assert code == 0
    models = json.loads(out)
    assert [m["name"] for m in models] == ["timemachine", "broken"]
    assert models[0]["metrics"] == {"perplexity": 1.25}


def test_end_session(run):
    run("generate", "abc", "-n", "2", "--keep-session")
    code, out, _ = run("end-session", "s1")
    assert (code, out) == (0, "ended session s1 (5 tokens)\n")


def test_health(run, fake):
    assert run("health")[:2] == (0, "SERVING\n")
    code, _, err = run("health", "--service", "nope")
    assert code == 1 and err == "error: NOT_FOUND: unknown service\n"


# ------------------------------------------------------------------- errors, connection


def test_error_line_and_exit_code(run):
    code, out, err = run("end-session", "nope")
    assert (code, out, err) == (1, "", "error: NOT_FOUND: session_id: unknown session\n")


def test_invalid_argument_from_the_server(run):
    code, _, err = run("generate", "")
    assert (code, err) == (1, "error: INVALID_ARGUMENT: prefix: must not be empty\n")


def test_mid_stream_error_keeps_what_was_printed(run, fake):
    fake.state.stream_fail_after = 1
    code, out, err = run("generate", "x", "-n", "20", "--stream")
    assert (code, out) == (1, "the ")
    assert err == "error: INTERNAL: internal error (request id r-1)\n"


def test_unreachable_server(run):
    code, out, err = run("models", "--target", "127.0.0.1:1", "--timeout", "3", target=False)
    assert code == 1 and out == ""
    assert err.startswith("error: UNAVAILABLE: ") and err.count("\n") == 1


def test_target_and_token_from_the_environment(run, fake, monkeypatch):
    monkeypatch.setenv("RNNSERVE_TARGET", fake.target)
    monkeypatch.setenv("RNNSERVE_TOKEN", "from-env")
    assert run("models", target=False)[0] == 0
    assert fake.state.last("ListModels").metadata["authorization"] == "Bearer from-env"
    assert run("models", "--token", "flag", target=False)[0] == 0
    assert fake.state.last("ListModels").metadata["authorization"] == "Bearer flag"


def test_no_token_no_authorization(run, fake, monkeypatch):
    monkeypatch.delenv("RNNSERVE_TOKEN", raising=False)
    run("models")
    assert "authorization" not in fake.state.last("ListModels").metadata


def test_tls_ca_file_must_exist(run, tmp_path):
    code, _, err = run("models", "--tls-ca", str(tmp_path / "ca.pem"))
    assert code == 2 and err.startswith("error: cannot read")


# ------------------------------------------------------------------------ usage, help


def test_help_for_every_command(capsys):
    assert cli.main(["--help"]) == 0
    for command in ("generate", "classify", "models", "end-session", "health"):
        assert cli.main([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "--target" in out and "--token" in out and "--tls-ca" in out, command


def test_usage_errors_exit_2(capsys):
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["generate", "-n", "many"]) == 2
    assert cli.main(["end-session"]) == 2
    assert "usage:" in capsys.readouterr().err


# ------------------------------------------------------------------------- delegation


@pytest.mark.parametrize(
    ("command", "module"),
    [("serve", "rnnserve.server.main"), ("train", "rnnserve.models.training.cli")],
)
def test_delegates_all_arguments(command, module, monkeypatch):
    seen = []
    fake_module = types.ModuleType(module)
    fake_module.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, module, fake_module)
    assert cli.main([command, "--port", "0", "--help", "--target", "x"]) == 3
    assert seen == [["--port", "0", "--help", "--target", "x"]]


def test_delegate_returning_none_is_success(monkeypatch):
    fake_module = types.ModuleType("rnnserve.server.main")
    fake_module.main = lambda argv: None
    monkeypatch.setitem(sys.modules, "rnnserve.server.main", fake_module)
    assert cli.main(["serve"]) == 0


@pytest.mark.parametrize("command", ["serve", "train"])
def test_missing_delegate_is_a_clear_error(command, monkeypatch, capsys):
    module = cli._DELEGATES[command][0]
    monkeypatch.setitem(sys.modules, module, None)  # import of it raises ImportError
    assert cli.main([command, "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not available" in err and err.count("\n") == 1

