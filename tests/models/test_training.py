"""Training smoke tests: tiny corpora, seconds not minutes; the loss falls; runs reproduce."""

import json
import math

import pytest
import torch
from rnnserve.models.checkpoint import load_model, read_config
from rnnserve.models.training import cli
from rnnserve.models.training.charlm import (
    CharLMTrainConfig,
    sequential_batches,
    split_corpus,
    train_charlm,
)
from rnnserve.models.training.common import EarlyStopping
from rnnserve.models.training.sentiment import (
    SentimentTrainConfig,
    stratified_split,
    train_sentiment,
)

CORPUS = ("the time traveller for so it will be convenient to speak of him was expounding a "
          "recondite matter to us his grey eyes shone and twinkled ") * 12
TINY_LM = CharLMTrainConfig(num_hiddens=32, num_layers=1, dropout=0.0, batch_size=4,
                            num_steps=16, lr=1e-2, epochs=4, patience=10)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_charlm_loss_falls_and_run_reproduces():
    a = train_charlm(CORPUS, TINY_LM, show_progress=False)
    losses = [row["train_loss"] for row in a.history]
    assert losses[-1] < losses[0] - 0.3
    assert a.history[-1]["val_loss"] < a.history[0]["val_loss"]
    assert a.metrics["test_perplexity"] < len(a.vocab)
    b = train_charlm(CORPUS, TINY_LM, show_progress=False)
    assert a.metrics == b.metrics


def test_split_and_batches():
    train, val, test = split_corpus("x" * 1000)
    assert (len(train), len(val), len(test)) == (810, 90, 100)
    ids = torch.arange(200)
    batches = sequential_batches(ids, 4, 8, torch.Generator().manual_seed(0))
    x0, y0 = batches[0]
    assert x0.shape == (4, 8) and torch.equal(y0, x0 + 1)
    assert torch.equal(batches[1][0][:, 0], x0[:, -1] + 1)  # rows continue across windows


def test_early_stopping_keeps_best():
    net = torch.nn.Linear(1, 1)
    stop = EarlyStopping(patience=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert not stop.update(1.0, 1, net)
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert not stop.update(1.5, 2, net)
    assert stop.update(1.2, 3, net)
    stop.restore(net)
    assert net.weight.item() == 1.0 and stop.best_epoch == 1


def test_stratified_split_is_seeded_and_balanced():
    labels = [1] * 50 + [0] * 30
    tr, va, te = stratified_split(labels, 0.1, 0.1, torch.Generator().manual_seed(3))
    assert sorted(tr + va + te) == list(range(80))
    assert sum(labels[i] for i in te) == 5 and len(te) == 8
    again = stratified_split(labels, 0.1, 0.1, torch.Generator().manual_seed(3))
    assert again == (tr, va, te)


def _sentences():
    pos = ["a good film", "great and fun", "i loved it", "wonderful acting , good story",
           "fun fun fun", "a great good time"] * 5
    neg = ["a bad film", "boring and dull", "i hated it", "awful acting , bad story",
           "dull dull dull", "a bad boring time"] * 5
    return pos, neg


def test_sentiment_loss_falls():
    pos, neg = _sentences()
    cfg = SentimentTrainConfig(embedding_dim=8, hidden_dim=8, seq_length=8, min_freq=1,
                               batch_size=8, lr=2e-2, epochs=5, patience=10, drop_prob=0.1,
                               word_dropout=0.1, embedding_init_std=0.1, monitor="accuracy")
    result = train_sentiment(pos + neg, [1] * len(pos) + [0] * len(neg), cfg, show_progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.metrics["train_accuracy"] > 0.8
    assert result.vocab.idx_to_token[:2] == ["<unk>", "<pad>"]


def test_cli_writes_loadable_versions(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS.replace(" him ", " Him,\n"))
    out = tmp_path / "repo" / "tiny" / "3"
    argv = ["charlm", "--corpus", str(corpus), "--out", str(out), "--num-hiddens", "16",
            "--num-layers", "1", "--batch-size", "4", "--num-steps", "8", "--epochs", "2",
            "--threads", "1", "--device", "cpu", "--no-progress", "--normalization", "d2l"]
    assert cli.main(argv) == 0
    cfg = read_config(out)
    assert cfg["training"]["argv"] == argv
    assert cfg["training"]["command"].startswith("rnnserve train charlm --corpus ")
    assert cfg["name"] == "tiny" and cfg["version"] == 3 and cfg["text"]["normalization"] == "d2l"
    assert math.isfinite(cfg["metrics"]["test_perplexity"]) and "split" in cfg["metrics"]
    assert json.loads(capsys.readouterr().out)["metrics"] == cfg["metrics"]
    assert load_model(out).kind == "charlm"

    pos, neg = _sentences()
    (tmp_path / "p.txt").write_text("\n".join(pos))
    (tmp_path / "n.txt").write_bytes("\n".join(neg).encode() + b"\nna\xefve\n")  # latin-1 line
    sa = tmp_path / "repo" / "sa" / "1"
    argv = ["sentiment", "--pos", str(tmp_path / "p.txt"), "--neg", str(tmp_path / "n.txt"),
            "--out", str(sa), "--embedding-dim", "8", "--hidden-dim", "8", "--seq-length", "8",
            "--min-freq", "1", "--epochs", "2", "--threads", "1", "--no-progress"]
    assert cli.main(argv) == 0
    m = load_model(sa)
    assert m.kind == "classifier" and m.labels == ["negative", "positive"]
    assert m.tokenizer.config.pad_index == 1 and m.tokenizer.config.padding == "pre"
    assert "test_accuracy" in m.config["metrics"]


def test_cli_rejects_bad_name(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["charlm", "--corpus", "x", "--out", str(tmp_path / "Bad Name" / "1")])
