"""Seed 002's forecaster: the seed's checkpoints load strict, forecasts equal the seed's loop,
the serving step equals the seed's forward, configs are checked, training writes loadable
versions (sine and a CSV series)."""

import json
import math

import numpy as np
import pytest
import torch
from rnnserve.models import ForecastConfig, Forecaster, ModelKind, forecast
from rnnserve.models.checkpoint import CheckpointError, config_schema, load_model, read_config
from rnnserve.models.training import cli
from rnnserve.models.training.forecast import ForecastTrainConfig, read_series, train_sine
from seed_oracles import Net, seed_forecast

SERIES = [float(v) for v in np.sin(np.linspace(0.3, 6.3, 30))]


def _write(tmp_path, config, state_dict, name="fc"):
    vdir = tmp_path / "repo" / name / "1"
    vdir.mkdir(parents=True)
    (vdir / "config.json").write_text(json.dumps(config))
    torch.save(state_dict, vdir / "model.pt")
    return vdir


def _seed_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # the seed's N(0, 0.001) makes a near-constant forecaster: liven it up
        for p in net.rnn.parameters():
            p.normal_(0.0, 0.4)
    return net.eval()


def test_seed_checkpoint_loads_strict_and_forecasts_like_the_seed(tmp_path):
    net = _seed_net()
    vdir = _write(tmp_path, {"kind": "forecast", "architecture": {}}, net.state_dict())
    loaded = load_model(vdir)
    assert loaded.kind is ModelKind.FORECAST and loaded.features == 1 and loaded.scaling is None
    assert set(loaded.module.state_dict()) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0",
                                                "rnn.bias_ih_l0", "rnn.bias_hh_l0",
                                                "linear.weight", "linear.bias"}
    ours = forecast(loaded.module, torch.tensor(SERIES).view(-1, 1), 40).view(-1).tolist()
    seed = seed_forecast(net, SERIES, 40)
    assert max(abs(a - b) for a, b in zip(ours, seed, strict=True)) < 1e-6
    assert max(seed) - min(seed) > 0.1  # a forecast that moves: the comparison can fail


@pytest.mark.parametrize("cell,layers", [("gru", 2), ("lstm", 2), ("rnn", 1)])
def test_step_equals_forward(cell, layers):
    torch.manual_seed(1)
    net = Forecaster(ForecastConfig(cell=cell, input_size=2, hidden_size=8, num_layers=layers,
                                    nonlinearity="relu" if cell == "rnn" else "tanh")).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5)
    x = torch.randn(3, 6, 2)  # (B, T, F)
    with torch.no_grad():
        full, _ = net(x)  # (B, T, F)
        y, state = net.prefill(x[:, :2], net.zero_state(3))
        torch.testing.assert_close(y, full[:, 1], rtol=0, atol=1e-6)
        batched = state
        for t in range(2, 6):
            y, state = net.step(x[:, t], state)
            torch.testing.assert_close(y, full[:, t], rtol=0, atol=1e-6)
            yb, batched = net.step_batched(x[:, t], batched)
            torch.testing.assert_close(yb, full[:, t], rtol=0, atol=1e-6)
        for i in range(3):  # a row's step alone is the batched step's row, bit for bit
            alone, _ = net.step(x[i : i + 1, 5], tuple(s[:, i : i + 1] for s in state))
            assert torch.equal(alone[0], net.step(x[:, 5], state)[0][i])


def test_config_checks(tmp_path):
    assert set(config_schema()["properties"]["kind"]["enum"]) == {k.value for k in ModelKind}
    net = Forecaster(ForecastConfig(input_size=2))
    good = {"kind": "forecast", "architecture": {"input_size": 2},
            "scaling": {"mean": [0.0, 1.0], "std": [1.0, 2.0]}}
    vdir = _write(tmp_path, good, net.state_dict())
    assert load_model(vdir).scaling.std == (1.0, 2.0)
    for bad, match in [
        ({**good, "scaling": {"mean": [0.0], "std": [1.0]}}, "scaling.mean has 1 values"),
        ({**good, "scaling": {"mean": [0.0, 0.0], "std": [1.0, 0.0]}}, "scaling/std/1"),
        ({**good, "vocab": ["<unk>"]}, "invalid config"),
        ({**good, "architecture": {"input_size": 2, "cell": "tcn"}}, "architecture/cell"),
    ]:
        (vdir / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            read_config(vdir)


def test_sine_training_improves_on_the_seed_procedure():
    cfg = ForecastTrainConfig(iterations=150, heldout_windows=4, seed=0)
    torch.manual_seed(0)
    result = train_sine(cfg, show_progress=False)
    m = result.metrics
    assert m["horizon"] == 25 and m["heldout_windows"] == 4
    assert result.history[-1]["train_loss"] < 0.1  # predicting 0 for sin scores ~0.5
    assert m["autoregressive_mse"] < m["last_value_mse"]


def test_cli_series_csv_writes_a_loadable_scaled_version(tmp_path, capsys):
    t = np.arange(400)
    csv = tmp_path / "series.csv"
    csv.write_text("time,load\n" + "\n".join(f"{i},{100 + 20 * math.sin(i / 8)}" for i in t))
    assert read_series(csv, ["load"]).shape == (400, 1)
    out = tmp_path / "repo" / "load" / "1"
    argv = ["forecast", "--series", str(csv), "--columns", "load", "--out", str(out),
            "--iterations", "60", "--window", "40", "--warmup", "20", "--threads", "1",
            "--no-progress"]
    assert cli.main(argv) == 0
    cfg = read_config(out)
    assert cfg["kind"] == "forecast" and cfg["training"]["command"].startswith(
        "rnnserve train forecast --series ")
    assert abs(cfg["scaling"]["mean"][0] - 100) < 2 and cfg["scaling"]["std"][0] > 10
    assert json.loads(capsys.readouterr().out)["metrics"] == cfg["metrics"]
    assert {"one_step_mse", "autoregressive_mse", "seed_procedure_mse"} <= set(cfg["metrics"])
    assert load_model(out).features == 1
