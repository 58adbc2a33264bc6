"""Train seed 002's forecaster on sine windows (the seed's setup) or on a user's CSV series.

The seed's setup is the default: windows of ``window`` = 50 points of ``sin`` evenly spaced over
``[k, k + span]`` (span 10) with ``k`` drawn from ``{0, ..., offsets - 1}`` (offsets 3), one
window per iteration, input the first 49 points and target the last 49 (each output predicts
the next point), MSE loss, Adam at lr 0.01, 6000 iterations, recurrent weights initialised
N(0, 0.001). Two deliberate differences, both options: every window starts from a zero state
(``carry_state`` replays the seed's state carried across iterations; serving starts from zero),
and the run is seeded.

Held-out windows (seeded): for sine, ``heldout_windows`` windows at offsets drawn uniformly
from ``[0, offsets)`` (phases training never saw exactly); for a series, windows over its last
``test_fraction`` (never trained on). Metrics, all mean squared errors in the data's units:

- ``one_step_mse``: every point predicted from the true points before it (teacher forcing);
- ``autoregressive_mse``: observe the first ``warmup`` points, predict the rest of the window
  (``window - warmup`` points), each prediction fed back (what Forecast does);
- ``seed_procedure_mse``: the seed's own test, the baseline: observe one point, predict the
  next ``window - 1`` points autoregressively;
- ``last_value_mse``: the naive forecast (repeat the last observed point) over the same horizon.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..forecast import ForecastConfig, Forecaster, forecast
from ..kinds import ModelKind
from .common import progress, round_floats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForecastTrainConfig:
    """Hyperparameters of a forecaster run (the defaults are seed 002's and made ``sine``)."""

    cell: str = "rnn"
    hidden_size: int = 16
    num_layers: int = 1
    nonlinearity: str = "tanh"
    window: int = 50  # points per window (the seed's num_points)
    span: float = 10.0  # sine only: a window covers [k, k + span]
    offsets: int = 3  # sine only: k is drawn from {0, ..., offsets - 1}
    iterations: int = 6000
    batch_size: int = 1  # windows per iteration (the seed: 1)
    lr: float = 0.01
    carry_state: bool = False  # the seed carries the state across iterations
    warmup: int = 25  # held-out: observed points before the autoregressive horizon
    heldout_windows: int = 64  # sine only
    test_fraction: float = 0.2  # series only: the last part of the series is held out
    scale: str = "auto"  # series only: "auto" records mean/std scaling, "none" takes raw values
    seed: int = 0


@dataclass
class ForecastTrainResult:
    """The trained model (eval mode, CPU), its architecture, scaling, metrics and history."""

    model: Forecaster
    arch: ForecastConfig
    metrics: dict
    scaling: dict | None = None
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------- data
def sine_window(k: float, cfg: ForecastTrainConfig) -> np.ndarray:
    """The seed's window: ``sin`` at ``window`` points evenly spaced over [k, k + span]."""
    return np.sin(np.linspace(k, k + cfg.span, cfg.window)).reshape(cfg.window, 1)


def read_series(path: str | Path, columns: list[str] | None = None) -> np.ndarray:
    """A CSV file's numeric columns as ``(T, F)`` float64 (a non-numeric first row is a header).

    ``columns`` picks columns by header name or 0-based index; default: every column.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    header: list[str] | None = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    index = list(range(len(rows[0]))) if rows else []
    if columns:
        index = [header.index(c) if header and c in header else int(c) for c in columns]
    try:
        data = np.array([[float(r[i]) for i in index] for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: not a numeric CSV: {err}") from None
    if data.shape[0] < 3 or not np.isfinite(data).all():
        raise ValueError(f"{path}: needs at least 3 rows of finite numbers")
    return data


# ------------------------------------------------------------------------------ training
def _mse(a: Tensor, b: Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


@torch.no_grad()
def evaluate(net: Forecaster, windows: list[np.ndarray], warmup: int,
             scaling: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """The held-out metrics of the module docstring (data units) over ``windows`` (T, F)."""
    mean, std = scaling if scaling is not None else (0.0, 1.0)
    one, auto, seed_way, naive = [], [], [], []
    for w in windows:
        x = torch.tensor((w - mean) / std, dtype=torch.float32)  # (T, F), model space
        unscale = lambda t: t.double() * torch.as_tensor(std) + torch.as_tensor(mean)  # noqa: E731
        truth = torch.tensor(w)
        out, _ = net(x[:-1].unsqueeze(0))  # (1, T-1, F)
        one.append(_mse(unscale(out[0]), truth[1:]))
        auto.append(_mse(unscale(forecast(net, x[:warmup], len(w) - warmup)), truth[warmup:]))
        seed_way.append(_mse(unscale(forecast(net, x[:1], len(w) - 1)), truth[1:]))
        naive.append(_mse(truth[warmup - 1].expand(len(w) - warmup, -1), truth[warmup:]))
    return {
        "one_step_mse": float(np.mean(one)),
        "autoregressive_mse": float(np.mean(auto)),
        "seed_procedure_mse": float(np.mean(seed_way)),
        "last_value_mse": float(np.mean(naive)),
    }


def train_forecaster(
    draw_window: object,
    heldout: list[np.ndarray],
    cfg: ForecastTrainConfig,
    *,
    features: int = 1,
    scaling: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    show_progress: bool = True,
    split: str = "",
) -> ForecastTrainResult:
    """Train on windows from ``draw_window()`` ((T, F) arrays, data units), evaluate on
    ``heldout``. Seed torch and numpy before calling (``common.seed_everything``)."""
    if not 2 <= cfg.warmup < cfg.window:
        raise ValueError("warmup must be at least 2 and less than window")
    arch = ForecastConfig(cell=cfg.cell, input_size=features, hidden_size=cfg.hidden_size,
                          num_layers=cfg.num_layers, nonlinearity=cfg.nonlinearity)
    net = Forecaster(arch).to(device)
    optimizer = torch.optim.Adam(net.parameters(), cfg.lr)
    criterion = nn.MSELoss()
    mean, std = scaling if scaling is not None else (0.0, 1.0)
    state = None
    history: list[dict] = []
    start = time.perf_counter()
    running = 0.0
    net.train()
    for it in progress(range(cfg.iterations), "train forecast", show_progress):
        batch = np.stack([(draw_window() - mean) / std for _ in range(cfg.batch_size)])
        data = torch.tensor(batch, dtype=torch.float32, device=device)  # (B, T, F)
        x, y = data[:, :-1], data[:, 1:]
        out, state = net(x, state if cfg.carry_state else None)
        state = tuple(s.detach() for s in state)
        loss = criterion(out, y)
        net.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
        if (it + 1) % 1000 == 0 or it + 1 == cfg.iterations:
            n = (it % 1000) + 1
            history.append({"iteration": it + 1, "train_loss": running / n})
            logger.info("iteration %d: train loss %.6f", it + 1, running / n)
            running = 0.0
    net.eval()
    net = net.cpu()
    metrics = evaluate(net, heldout, cfg.warmup, scaling)
    metrics = round_floats({
        "split": split,
        **metrics,
        "horizon": cfg.window - cfg.warmup,
        "warmup": cfg.warmup,
        "heldout_windows": len(heldout),
        "final_train_loss": history[-1]["train_loss"] if history else math.nan,
    }, 8)
    logger.info("held-out: autoregressive mse %.6f (seed procedure %.6f) in %.1fs",
                metrics["autoregressive_mse"], metrics["seed_procedure_mse"],
                time.perf_counter() - start)
    scaling_json = None
    if scaling is not None:
        scaling_json = {"mean": [float(v) for v in np.atleast_1d(mean)],
                        "std": [float(v) for v in np.atleast_1d(std)]}
    return ForecastTrainResult(net, arch, metrics, scaling_json, history)


def train_sine(cfg: ForecastTrainConfig, *, device: torch.device | str = "cpu",
               show_progress: bool = True) -> ForecastTrainResult:
    """The seed's setup: sine windows at integer offsets; held out at uniform offsets."""
    rng = np.random.default_rng(cfg.seed)
    heldout_rng = np.random.default_rng(cfg.seed + 1)
    heldout = [sine_window(k, cfg) for k in heldout_rng.uniform(0, cfg.offsets,
                                                                 cfg.heldout_windows)]
    split = (f"train: windows at offsets k in {{0..{cfg.offsets - 1}}}; held out: "
             f"{cfg.heldout_windows} windows at offsets uniform in [0, {cfg.offsets})")
    return train_forecaster(lambda: sine_window(int(rng.integers(cfg.offsets)), cfg), heldout,
                            cfg, device=device, show_progress=show_progress, split=split)


def train_series(data: np.ndarray, cfg: ForecastTrainConfig, *,
                 device: torch.device | str = "cpu",
                 show_progress: bool = True) -> ForecastTrainResult:
    """A user's series ``(T, F)``: random windows of its first part; held-out windows (half a
    window apart) over its last ``test_fraction``."""
    cut = int(round(len(data) * (1 - cfg.test_fraction)))
    train, test = data[:cut], data[cut:]
    if len(train) < cfg.window or len(test) < cfg.window:
        raise ValueError(f"the series has {len(data)} points: both parts need at least "
                         f"window = {cfg.window} (try a smaller --window)")
    scaling = None
    if cfg.scale == "auto":
        std = train.std(axis=0)
        scaling = (train.mean(axis=0), np.where(std > 0, std, 1.0))
    rng = np.random.default_rng(cfg.seed)
    step = max(cfg.window // 2, 1)
    heldout = [test[i:i + cfg.window] for i in range(0, len(test) - cfg.window + 1, step)]
    split = (f"train: random windows of the first {cut} points; held out: {len(heldout)} "
             f"windows of the last {len(test)} points")

    def draw() -> np.ndarray:
        i = int(rng.integers(len(train) - cfg.window + 1))
        return train[i:i + cfg.window]

    return train_forecaster(draw, heldout, cfg, features=data.shape[1], scaling=scaling,
                            device=device, show_progress=show_progress, split=split)


def forecast_config_json(result: ForecastTrainResult, name: str, version: int,
                         training: dict) -> dict:
    """The config.json of a trained forecaster."""
    config = {
        "name": name,
        "version": version,
        "kind": ModelKind.FORECAST.value,
        "description": "seed 002's sequence forecaster (nn.RNN + nn.Linear), autoregressive",
        "architecture": result.arch.to_dict(),
        "forecast": {"default_horizon": result.metrics["horizon"]},
        "training": {**training, "history": result.history},
        "metrics": result.metrics,
    }
    if result.scaling is not None:
        config["scaling"] = result.scaling
    return config
