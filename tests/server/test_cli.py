"""The ``rnnserve`` command line against a real server.

``cli.main`` uses the blocking client, so it runs in a thread while the in-process server keeps
serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json

from rnnserve.client import cli


async def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_generate_prints_the_continuation(server, aclient, capsys):
    expected = (await aclient.generate("time traveller", max_tokens=20)).text
    code, out, err = await run_cli(capsys, "generate", "time traveller", "-n", "20",
                                   "--target", server.target)
    assert code == 0, err
    assert out == expected + "\n"

    code, out, err = await run_cli(capsys, "generate", "time traveller", "-n", "20", "--stream",
                                   "--target", server.target)
    assert code == 0, err
    assert out == expected + "\n"

    code, out, err = await run_cli(capsys, "generate", "time traveller", "--max-tokens", "20",
                                   "--json", "--target", server.target)
    assert code == 0, err
    result = json.loads(out)
    assert result["text"] == expected and result["finish_reason"] == "length"

    code, out, err = await run_cli(capsys, "generate", "time traveller", "-n", "20", "--stream",
                                   "--json", "--target", server.target)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert "".join(c["text"] for c in lines) == expected
    assert lines[-1]["finish_reason"] == "length"

    sampled = (await aclient.generate("time", max_tokens=30, temperature=0.8, seed=5,
                                      stop=["q"])).text
    code, out, err = await run_cli(capsys, "generate", "time", "-n", "30", "--temperature", "0.8",
                                   "--seed", "5", "--stop", "q", "--target", server.target)
    assert code == 0 and out == sampled + "\n"


async def test_cli_sessions(server, aclient, capsys):
    code, out, err = await run_cli(capsys, "generate", "the time", "-n", "10", "--keep-session",
                                   "--target", server.target)
    assert code == 0, err
    first = out.rstrip("\n")
    assert err.startswith("session: ")
    sid = err.split("session: ", 1)[1].strip()
    code, out, err = await run_cli(capsys, "generate", " machine", "-n", "15", "--session", sid,
                                   "--target", server.target)
    assert code == 0, err
    expected = (await aclient.generate("the time" + first + " machine", max_tokens=15)).text
    assert out == expected + "\n"
    code, out, err = await run_cli(capsys, "end-session", sid, "--target", server.target)
    assert code == 0, err
    assert str(len("the time") + 10 + len(" machine") + 15) in out
    code, out, err = await run_cli(capsys, "end-session", sid, "--target", server.target)
    assert code == 1
    assert err.startswith("error: NOT_FOUND") and "ended" in err


async def test_classify_models_and_health(server, aclient, capsys):
    texts = ["a wonderful film", "dull and lifeless"]
    expected = await aclient.classify(texts)
    code, out, err = await run_cli(capsys, "classify", *texts, "--target", server.target)
    assert code == 0, err
    rows = out.splitlines()
    assert rows[0].split() == ["LABEL", "SCORE", "TEXT"]
    for row, want, text in zip(rows[1:], expected, texts, strict=True):
        label, score, rest = row.split(None, 2)
        assert (label, rest) == (want.label, text)
        assert abs(float(score) - want.score) < 1e-4

    code, out, err = await run_cli(capsys, "classify", *texts, "--json", "--explain",
                                   "--target", server.target)
    assert code == 0, err
    rows = json.loads(out)
    assert [r["text"] for r in rows] == texts and all(r["tokens"] for r in rows)

    code, out, err = await run_cli(capsys, "models", "--target", server.target)
    assert code == 0, err
    assert "timemachine" in out and "sentiment" in out and "ready" in out
    code, out, err = await run_cli(capsys, "models", "--json", "--target", server.target)
    assert {m["name"] for m in json.loads(out)} >= {"timemachine", "sentiment"}

    code, out, err = await run_cli(capsys, "health", "--target", server.target)
    assert (code, out.strip()) == (0, "SERVING")


async def test_errors_exit_1_with_one_line(server, capsys):
    cases = [
        (["generate", "", "-n", "5"], "INVALID_ARGUMENT", "prefix"),
        (["generate", "time", "--model", "ghost"], "NOT_FOUND", "ghost"),
        (["generate", "time", "--temperature", "-1"], "INVALID_ARGUMENT", "temperature"),
        (["generate", "time", "--session", "nope", "--stream"], "NOT_FOUND", "session_id"),
        (["classify", "", "--target", server.target], "INVALID_ARGUMENT", "texts[0]"),
    ]
    for argv, status, word in cases:
        code, out, err = await run_cli(capsys, *argv, "--target", server.target)
        assert code == 1, (argv, out, err)
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: {status}: ") and word in err, err
        assert "Traceback" not in err
    # usage problems are exit 2
    code, out, err = await run_cli(capsys, "classify", "--target", server.target)
    assert code == 2 and "no texts" in err


async def test_unreachable_server_is_an_error_not_a_crash(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    code, out, err = await run_cli(capsys, "generate", "time", "-n", "3", "--timeout", "3",
                                   "--target", f"127.0.0.1:{port}")
    assert code == 1
    assert err.startswith("error: UNAVAILABLE") and err.count("\n") == 1
