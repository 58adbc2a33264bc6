"""ForecastService end to end (DESIGN semantics 8): the shipped ``sine`` model served by a real
server, called with the real client, compared with seed 002's ``Net`` on the same weights.

Forecasts equal the seed's loop to 1e-6; a stream is the unary call in pieces; sessions continue
exactly like one call on the session's whole series; batched forecasts equal lone ones; bad input
is INVALID_ARGUMENT naming the field; the CLI prints, plots and keeps sessions; grpcurl works.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import MODEL_REPOSITORY, TEST_DEVICE
from rnnserve.client import AsyncClient, InvalidArgumentError, NotFoundError
from seed_oracles import Net
from seed_oracles import seed_forecast as seed_loop

SINE = MODEL_REPOSITORY / "sine" / "1" / "model.pt"
SERIES = [float(v) for v in np.sin(np.linspace(0.7, 10.7, 50))[:30]]


@pytest.fixture(scope="module")
def seed_net() -> Net:
    net = Net()
    net.load_state_dict(torch.load(SINE, weights_only=True), strict=True)
    return net.to(TEST_DEVICE).eval()


def seed_forecast(net: Net, series: list[float], horizon: int) -> list[float]:
    """Seed 002's loop on the test servers' device (the seed's numbers on that device)."""
    return seed_loop(net, series, horizon, TEST_DEVICE)


async def grpcurl(target: str, method: str, data: dict) -> tuple[int, str, str]:
    """The venv's grpcurl (a dev dependency), plaintext, through server reflection."""
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "grpcurl"), "-plaintext", "-max-time", "15",
        "-d", json.dumps(data), target, method,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


def close(got, want, tol=1e-6) -> bool:
    return len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want, strict=True)) < tol


async def test_forecast_equals_the_seed_stream_and_sessions(server, aclient: AsyncClient,
                                                            seed_net, metrics_of):
    seed = seed_forecast(seed_net, SERIES, 40)
    result = await aclient.forecast(SERIES, 40)  # empty model: the default forecaster
    assert (result.model, result.observed_points, result.predicted_points) == ("sine", 30, 40)
    assert close(result.values, seed), "Forecast == seed 002's loop on the same weights"
    assert list(result.values) == seed  # bit for bit, in fact: the seed's batch-1 kernels
    assert max(seed) - min(seed) > 1.0  # a real sine forecast, not a flat line

    chunks = [c async for c in aclient.forecast_stream(SERIES, 40, model="sine")]
    assert [v for c in chunks for v in c.values] == list(result.values)
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert chunks[-1].predicted_points == 40

    # a session's series is every point observed in it: continuing it with B equals one
    # stateless call on A + B; continuing with nothing extends the last forecast exactly
    a, b = SERIES[:12], SERIES[12:20]
    first = await aclient.forecast(a, 5, keep_session=True)
    assert first.session_id and close(first.values, seed_forecast(seed_net, a, 5))
    second = await aclient.forecast(b, 7, session_id=first.session_id)
    assert close(second.values, seed_forecast(seed_net, a + b, 7))
    third = await aclient.forecast([], 3, session_id=first.session_id)
    assert close(third.values, seed_forecast(seed_net, a + b, 10)[7:])
    fourth = await aclient.forecast(SERIES[20:22], 2, session_id=first.session_id)
    assert close(fourth.values, seed_forecast(seed_net, SERIES[:22], 2))
    assert await aclient.end_session(first.session_id) == 12 + 5 + 8 + 7 + 3 + 2 + 2
    with pytest.raises(NotFoundError):
        await aclient.forecast([0.1], 1, session_id=first.session_id)

    view = await metrics_of(server)
    points = "rnnserve_forecast_points_total"
    assert view.value(points, model="sine", phase="predicted") == 40 + 40 + 5 + 7 + 3 + 2
    assert view.value(points, model="sine", phase="observed") == 30 + 30 + 12 + 8 + 2
    assert view.value("rnnserve_requests_total", protocol="rnnserve", method="Forecast",
                      model="sine", code="OK") == 5


@pytest.mark.parametrize("invariant", [True, False])
async def test_batched_forecasts_equal_lone_ones(make_server, connect, invariant):
    server = await make_server(max_batch_size=16, max_steps_per_iteration=2,
                               forecast_batch_invariant=invariant)
    rng = np.random.default_rng(5)
    jobs = [(SERIES[: int(rng.integers(1, 30))], int(rng.integers(1, 40))) for _ in range(24)]
    async with connect(server) as client:
        alone = [(await client.forecast(s, h)).values for s, h in jobs]
        together = await asyncio.gather(*(client.forecast(s, h) for s, h in jobs))
    for lone, batched in zip(alone, together, strict=True):
        if invariant:
            assert batched.values == lone  # bit for bit (DESIGN semantics 3)
        else:  # one batched call per step: the last bits may move with the batch
            assert close(batched.values, lone, 1e-5)


@pytest.mark.parametrize("kwargs,field", [
    (dict(series=[], horizon=5), "series"),
    (dict(series=[0.1, math.nan], horizon=5), "series[1]"),
    (dict(series=[math.inf], horizon=5), "series[0]"),
    (dict(series=[0.1], horizon=0), "horizon"),
    (dict(series=[0.1], horizon=5000), "horizon"),
    (dict(series=[0.1], horizon=5, model="timemachine"), "model"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(aclient: AsyncClient, kwargs, field):
    with pytest.raises(InvalidArgumentError) as info:
        await aclient.forecast(**kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(info.value.details).startswith(f"{field}:"), info.value.details
    assert len((await aclient.forecast([0.1, 0.2], 2)).values) == 2  # still serving


async def test_cli_and_grpcurl(server, tmp_path, aclient: AsyncClient):
    values = SERIES[:20]
    expected = (await aclient.forecast(values, 6)).values
    csv = tmp_path / "series.csv"
    csv.write_text("t,value\n" + "\n".join(f"{i},{v!r}" for i, v in enumerate(values)))
    png = tmp_path / "out.png"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rnnserve.client.cli", "forecast", "--target", server.target,
        "--file", str(csv), "--horizon", "6", "--plot", str(png), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    reply = json.loads(out)
    assert reply["values"] == list(expected) and reply["series"] == values
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    code, out, err = await grpcurl(server.target, "rnnserve.v1.ForecastService/Forecast",
                                   data={"series": values, "horizon": 6})
    assert code == 0, err
    assert close(json.loads(out)["values"], expected)
    code, _, err = await grpcurl(server.target, "rnnserve.v1.ForecastService/Forecast",
                                 data={"series": [], "horizon": 6})
    assert code == 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0] and "series" in err
