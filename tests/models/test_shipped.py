"""The shipped models in model_repository/: loadable, within size, quality bars met on held-out data."""

from pathlib import Path

import pytest
import torch
from rnnserve.models.charlm import predict_greedy
from rnnserve.models.checkpoint import find_models, load_model

REPO = Path(__file__).resolve().parents[2] / "model_repository"
MAX_MODEL_BYTES = 20 * 2**20


def test_repository_lists_the_shipped_models():
    specs = {s.name: s for s in find_models(REPO)}
    assert specs["sine"].kind == "forecast" and specs["sine"].version == 1
    assert specs["timemachine"].kind == "charlm" and specs["timemachine"].version == 1
    assert specs["sentiment"].kind == "classifier" and specs["sentiment"].version == 1


@pytest.mark.parametrize("name", ["timemachine", "sentiment", "sine"])
def test_size_and_training_record(name):
    vdir = REPO / name / "1"
    assert (vdir / "model.pt").stat().st_size <= MAX_MODEL_BYTES
    cfg = load_model(vdir).config
    training = cfg["training"]
    task = {"timemachine": "charlm", "sentiment": "sentiment", "sine": "forecast"}[name]
    assert training["command"].startswith(f"rnnserve train {task} ")
    assert f"--out model_repository/{name}/1" in training["command"]
    assert training["history"] and training["device"] == "cpu"


def test_timemachine_quality_and_generation():
    m = load_model(REPO / "timemachine" / "1")
    metrics = m.config["metrics"]
    assert "last 10%" in metrics["split"]
    assert metrics["test_perplexity"] <= 4.7
    assert m.config["architecture"]["cell"] == "lstm" and len(m.vocab) == 28
    prefix = "the time traveller "
    out = "".join(m.vocab.to_tokens(predict_greedy(m.module, m.vocab.encode(prefix), 40)))
    assert len(out) == 40 and set(out) <= set(" abcdefghijklmnopqrstuvwxyz")


def test_sentiment_quality_and_scores():
    m = load_model(REPO / "sentiment" / "1")
    metrics = m.config["metrics"]
    assert "stratified" in metrics["split"]
    assert metrics["test_accuracy"] >= 0.76
    texts = ["a wonderful , moving and funny film", "a dull , boring and stupid mess"]
    x = torch.tensor([m.tokenizer.encode(t, m.vocab).ids for t in texts])
    scores, weights = m.module.score(x)
    assert scores[0] > 0.5 > scores[1]
    assert weights.shape == x.shape


def test_sine_is_the_seed_setup_and_beats_the_baselines():
    m = load_model(REPO / "sine" / "1")
    assert m.config["architecture"] == {"cell": "rnn", "input_size": 1, "hidden_size": 16,
                                        "num_layers": 1, "nonlinearity": "tanh", "dropout": 0.0}
    assert m.scaling is None and "--wave sine" in m.config["training"]["command"]
    metrics = m.config["metrics"]
    assert "held out" in metrics["split"] and metrics["horizon"] == 25
    assert metrics["autoregressive_mse"] <= 0.02
    assert metrics["autoregressive_mse"] < metrics["seed_procedure_mse"] / 10
    assert metrics["autoregressive_mse"] < metrics["last_value_mse"] / 10
