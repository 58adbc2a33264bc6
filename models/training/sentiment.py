"""Train seed 001's SentimentRNN on positive/negative sentence files (e.g. rt-polarity).

Data: one sentence per line (UTF-8 or latin-1, decoded per line). Splits are seeded and
stratified: ``test_fraction`` (10%) of each class is the test set, ``val_fraction`` of each
class's remainder the validation set, the rest trains. The word vocabulary is built from the
training split only (``<unk>`` 0, ``<pad>`` 1, then words with ``min_freq`` or more, at most
``max_vocab`` entries). Texts are tokenized with :class:`~rnnserve.models.text.WordTokenizer`
(pre-padding to ``seq_length``).

Training follows the seed: BCE on the sigmoid output, Adam, gradient-norm clipping; plus
learning-rate halving on a plateau and early stopping on validation loss (or accuracy) keeping
the best weights. Test metrics are measured once, with the best weights.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..kinds import ModelKind
from ..sentiment import SentimentConfig, SentimentRNN
from ..text import WordTokenizer, WordTokenizerConfig, read_lines
from ..vocab import Vocab
from .common import EarlyStopping, progress, round_floats

logger = logging.getLogger(__name__)

LABELS = ["negative", "positive"]


@dataclass(frozen=True)
class SentimentTrainConfig:
    """Hyperparameters of a sentiment run (the defaults made the shipped ``sentiment``)."""

    embedding_dim: int = 128
    hidden_dim: int = 64
    no_layers: int = 1
    bidirectional: bool = True
    drop_prob: float = 0.5
    word_dropout: float = 0.1  # training only: replace each word id by <unk> with this probability
    embedding_init_std: float = 0.1  # > 0: re-initialise embeddings N(0, std); 0: torch default N(0, 1)
    seq_length: int = 50
    padding: str = "pre"
    min_freq: int = 2
    max_vocab: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    patience: int = 5
    lr_patience: int = 1
    lr_factor: float = 0.5
    monitor: str = "accuracy"  # early stopping on validation "loss" or "accuracy"
    clip: float = 5.0
    seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.1


@dataclass
class SentimentTrainResult:
    """The best model (eval mode, CPU), its vocabulary and tokenizer, metrics and history."""

    model: SentimentRNN
    vocab: Vocab
    tokenizer: WordTokenizer
    arch: SentimentConfig
    metrics: dict
    history: list[dict] = field(default_factory=list)


def load_polarity(pos: str | Path, neg: str | Path) -> tuple[list[str], list[int]]:
    """Sentences and labels (1 positive, 0 negative) from two one-sentence-per-line files."""
    pos_lines, neg_lines = read_lines(pos), read_lines(neg)
    return pos_lines + neg_lines, [1] * len(pos_lines) + [0] * len(neg_lines)


def stratified_split(
    labels: list[int], test_fraction: float, val_fraction: float, gen: torch.Generator
) -> tuple[list[int], list[int], list[int]]:
    """Seeded, per-class split of indices into (train, val, test)."""
    train, val, test = [], [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        perm = [idx[int(j)] for j in torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * test_fraction)
        n_val = round((len(idx) - n_test) * val_fraction)
        test += perm[:n_test]
        val += perm[n_test : n_test + n_val]
        train += perm[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def _encode(texts: list[str], tokenizer: WordTokenizer, vocab: Vocab) -> Tensor:
    return torch.tensor(
        [tokenizer.encode(t, vocab).ids for t in texts], dtype=torch.int64
    )  # (N, S)


@torch.no_grad()
def evaluate(
    model: SentimentRNN, x: Tensor, y: Tensor, device: torch.device, batch_size: int = 256
) -> tuple[float, float]:
    """(mean BCE loss, accuracy) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    loss_fn = nn.BCELoss(reduction="sum")
    total, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out, _ = model(xb)  # (B, 1)
        p = out[:, 0]
        total += float(loss_fn(p, yb))
        correct += int(((p > 0.5).float() == yb).sum())
    model.train(was_training)
    return total / len(x), correct / len(x)


def train_sentiment(
    texts: list[str],
    labels: list[int],
    cfg: SentimentTrainConfig,
    device: torch.device | str = "cpu",
    gen: torch.Generator | None = None,
    show_progress: bool = True,
) -> SentimentTrainResult:
    """Train on labelled sentences (see module docstring); returns the best model and metrics."""
    torch.manual_seed(cfg.seed)  # weight init and dropout masks
    device = torch.device(device)
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    tr, va, te = stratified_split(labels, cfg.test_fraction, cfg.val_fraction, gen)
    tok_cfg = WordTokenizerConfig(seq_length=cfg.seq_length, padding=cfg.padding, pad_index=1)
    tokenizer = WordTokenizer(tok_cfg)
    vocab = Vocab.build(
        (t for i in tr for t in tokenizer.tokenize(texts[i])),
        min_freq=cfg.min_freq,
        reserved_tokens=["<pad>"],
        max_size=cfg.max_vocab,
    )
    xs = {
        k: _encode([texts[i] for i in idx], tokenizer, vocab)
        for k, idx in (("train", tr), ("val", va), ("test", te))
    }
    ys = {
        k: torch.tensor([float(labels[i]) for i in idx])
        for k, idx in (("train", tr), ("val", va), ("test", te))
    }
    arch = SentimentConfig(
        vocab_size=len(vocab),
        embedding_dim=cfg.embedding_dim,
        hidden_dim=cfg.hidden_dim,
        no_layers=cfg.no_layers,
        drop_prob=cfg.drop_prob,
        bidirectional=cfg.bidirectional,
    )
    model = SentimentRNN.from_config(arch)
    if cfg.embedding_init_std > 0:
        nn.init.normal_(model.embedding.weight, std=cfg.embedding_init_std)
    model = model.to(device)
    logger.info(
        "sentiment: %d train / %d val / %d test, vocab %d, %d parameters, device %s",
        len(tr),
        len(va),
        len(te),
        len(vocab),
        sum(p.numel() for p in model.parameters()),
        device,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    mode = "min" if cfg.monitor == "loss" else "max"
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    stopper = EarlyStopping(patience=cfg.patience, mode=mode)
    loss_fn = nn.BCELoss()
    history: list[dict] = []
    start = time.perf_counter()
    n = len(tr)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, correct = 0.0, 0
        batches = [perm[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        for idx in progress(batches, f"epoch {epoch}", show_progress):
            xb, yb = xs["train"][idx], ys["train"][idx]
            if cfg.word_dropout > 0:
                drop = (torch.rand(xb.shape, generator=gen) < cfg.word_dropout) & (xb != tok_cfg.pad_index)
                xb = xb.masked_fill(drop, Vocab.UNK)
            xb, yb = xb.to(device), yb.to(device)
            out, _ = model(xb)  # (B, 1)
            p = out[:, 0]
            loss = loss_fn(p, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int(((p.detach() > 0.5).float() == yb).sum())
        val_loss, val_acc = evaluate(model, xs["val"], ys["val"], device)
        monitored = val_loss if cfg.monitor == "loss" else val_acc
        scheduler.step(monitored)
        stop = stopper.update(monitored, epoch, model)
        row = {
            "epoch": epoch,
            "train_loss": total / n,
            "train_accuracy": correct / n,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(round_floats(row))
        logger.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s | %.1fs",
            epoch,
            row["train_loss"],
            row["train_accuracy"],
            val_loss,
            val_acc,
            " *" if stopper.best_epoch == epoch else "",
            row["seconds"],
        )
        if stop:
            logger.info("early stopping after epoch %d (best epoch %d)", epoch, stopper.best_epoch)
            break
    stopper.restore(model)
    model.eval()
    results = {k: evaluate(model, xs[k], ys[k], device) for k in ("train", "val", "test")}
    metrics = round_floats(
        {
            "split": f"test = seeded stratified {cfg.test_fraction:.0%} of each class "
            f"({len(te)} sentences); "
            f"validation = {cfg.val_fraction:.0%} of the rest ({len(va)}); seed {cfg.seed}",
            "accuracy": results["test"][1],
            "test_accuracy": results["test"][1],
            "test_loss": results["test"][0],
            "val_accuracy": results["val"][1],
            "val_loss": results["val"][0],
            "train_accuracy": results["train"][1],
            "best_epoch": stopper.best_epoch,
            "epochs_run": len(history),
            "train_examples": len(tr),
            "val_examples": len(va),
            "test_examples": len(te),
        }
    )
    logger.info(
        "best epoch %d: val acc %.4f, test acc %.4f, test loss %.4f (%.0fs)",
        stopper.best_epoch,
        results["val"][1],
        results["test"][1],
        results["test"][0],
        time.perf_counter() - start,
    )
    if not math.isfinite(results["test"][0]):  # pragma: no cover - diagnostics only
        logger.warning("non-finite test loss")
    return SentimentTrainResult(
        model=model.cpu().eval(),
        vocab=vocab,
        tokenizer=tokenizer,
        arch=arch,
        metrics=metrics,
        history=history,
    )


def sentiment_config_json(
    result: SentimentTrainResult, name: str, version: int, training: dict
) -> dict:
    """The config.json of a trained classifier."""
    return {
        "name": name,
        "version": version,
        "kind": ModelKind.CLASSIFIER.value,
        "architecture": result.arch.to_dict(),
        "vocab": result.vocab.idx_to_token,
        "tokenizer": result.tokenizer.config.to_dict(),
        "labels": LABELS,
        "training": {**training, "history": result.history},
        "metrics": result.metrics,
    }
