"""Train a character language model (seed 000's ``RNNModel``) on a text corpus.

Data: the corpus is normalised as d2l does (``text.load_corpus``: letters and spaces, lower
case); the vocabulary is built from the whole normalised corpus (so it equals d2l's, index for
index). Held-out splits come from the end: the last ``test_fraction`` (10%) is the test set,
the last ``val_fraction`` (10%) of what remains is the validation set, the rest trains.

Training is d2l's sequential partitioning (truncated BPTT): each epoch starts at a random
offset, the training stream is cut into ``batch_size`` parallel rows, read ``num_steps`` at a
time with the hidden state carried (detached) between windows. Adam, gradient-norm clipping,
learning-rate halving on a validation plateau, early stopping on validation loss keeping the
best weights. Perplexity is ``exp(mean cross-entropy)`` over every next-character prediction of
a split read as one stream from a zero state.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from ..charlm import CharLMConfig, RNNModel
from ..kinds import ModelKind
from ..vocab import Vocab
from .common import EarlyStopping, progress, round_floats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CharLMTrainConfig:
    """Hyperparameters of a char LM run (the defaults made the shipped ``timemachine``)."""

    cell: str = "lstm"
    num_hiddens: int = 256
    num_layers: int = 2
    dropout: float = 0.5
    batch_size: int = 32
    num_steps: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    epochs: int = 60
    patience: int = 6
    lr_patience: int = 1
    lr_factor: float = 0.5
    clip: float = 1.0
    seed: int = 0
    test_fraction: float = 0.1
    val_fraction: float = 0.1


@dataclass
class CharLMTrainResult:
    """What a run produced: the best model (eval mode, CPU), its vocabulary, metrics, history."""

    model: RNNModel
    vocab: Vocab
    arch: CharLMConfig
    metrics: dict
    history: list[dict] = field(default_factory=list)


def split_corpus(
    corpus: str, test_fraction: float = 0.1, val_fraction: float = 0.1
) -> tuple[str, str, str]:
    """(train, val, test): test = last ``test_fraction``; val = last ``val_fraction`` of rest."""
    if len(corpus) < 10:
        raise ValueError("corpus too small to split")
    cut = int(len(corpus) * (1 - test_fraction))
    rest, test = corpus[:cut], corpus[cut:]
    vcut = int(len(rest) * (1 - val_fraction))
    return rest[:vcut], rest[vcut:], test


def sequential_batches(
    ids: Tensor, batch_size: int, num_steps: int, gen: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    """d2l ``seq_data_iter_sequential``: random offset, ``batch_size`` rows, windows."""
    offset = int(torch.randint(0, num_steps, (1,), generator=gen))
    num_tokens = ((len(ids) - offset - 1) // batch_size) * batch_size
    if num_tokens < batch_size:
        raise ValueError("training text too small for this batch size")
    xs = ids[offset : offset + num_tokens].reshape(batch_size, -1)  # (B, N)
    ys = ids[offset + 1 : offset + 1 + num_tokens].reshape(batch_size, -1)  # (B, N)
    steps = max(1, min(num_steps, xs.shape[1]))
    return [
        (xs[:, i : i + steps], ys[:, i : i + steps])
        for i in range(0, xs.shape[1] - steps + 1, steps)
    ]


def _detach(state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return state.detach() if isinstance(state, Tensor) else tuple(s.detach() for s in state)


@torch.no_grad()
def evaluate(net: RNNModel, ids: Tensor, device: torch.device, chunk: int = 2048) -> float:
    """Mean next-character cross-entropy over ``ids`` read as one stream from a zero state."""
    was_training = net.training
    net.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    state = net.begin_state(device, batch_size=1)
    total, count = 0.0, 0
    for i in range(0, len(ids) - 1, chunk):
        x = ids[i : min(i + chunk, len(ids) - 1)]
        y = ids[i + 1 : i + 1 + len(x)]
        out, state = net(x.reshape(1, -1).to(device), state)  # (T, V)
        total += float(loss_fn(out, y.to(device)))
        count += len(y)
    net.train(was_training)
    return total / max(count, 1)


def train_charlm(
    corpus: str,
    cfg: CharLMTrainConfig,
    device: torch.device | str = "cpu",
    gen: torch.Generator | None = None,
    show_progress: bool = True,
) -> CharLMTrainResult:
    """Train on a normalised corpus (see module docstring); returns the best model and metrics."""
    torch.manual_seed(cfg.seed)  # weight init and dropout masks
    device = torch.device(device)
    gen = gen if gen is not None else torch.Generator().manual_seed(cfg.seed)
    vocab = Vocab.build(corpus)
    train_txt, val_txt, test_txt = split_corpus(corpus, cfg.test_fraction, cfg.val_fraction)
    train_ids, val_ids, test_ids = (
        torch.tensor(vocab.encode(t), dtype=torch.int64) for t in (train_txt, val_txt, test_txt)
    )
    arch = CharLMConfig(
        cell=cfg.cell,
        vocab_size=len(vocab),
        num_hiddens=cfg.num_hiddens,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
    )
    net = RNNModel.from_config(arch).to(device)
    logger.info(
        "charlm: %d train / %d val / %d test chars, vocab %d, %d parameters, device %s",
        len(train_ids),
        len(val_ids),
        len(test_ids),
        len(vocab),
        sum(p.numel() for p in net.parameters()),
        device,
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.lr_factor, patience=cfg.lr_patience
    )
    loss_fn = nn.CrossEntropyLoss()
    stopper = EarlyStopping(patience=cfg.patience, mode="min")
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        net.train()
        batches = sequential_batches(train_ids, cfg.batch_size, cfg.num_steps, gen)
        state = net.begin_state(device, batch_size=cfg.batch_size)
        total, count = 0.0, 0
        for x, y in progress(batches, f"epoch {epoch}", show_progress):
            state = _detach(state)
            out, state = net(x.to(device), state)  # (T*B, V)
            loss = loss_fn(out, y.T.reshape(-1).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
            optimizer.step()
            total += loss.item() * y.numel()
            count += y.numel()
        train_loss = total / count
        val_loss = evaluate(net, val_ids, device)
        scheduler.step(val_loss)
        stop = stopper.update(val_loss, epoch, net)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_perplexity": math.exp(train_loss),
            "val_loss": val_loss,
            "val_perplexity": math.exp(val_loss),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(round_floats(row))
        logger.info(
            "epoch %d: train loss %.4f ppl %.3f | val loss %.4f ppl %.3f%s | %.1fs",
            epoch,
            train_loss,
            math.exp(train_loss),
            val_loss,
            math.exp(val_loss),
            " *" if stopper.best_epoch == epoch else "",
            row["seconds"],
        )
        if stop:
            logger.info("early stopping after epoch %d (best epoch %d)", epoch, stopper.best_epoch)
            break
    stopper.restore(net)
    net.eval()
    test_loss = evaluate(net, test_ids, device)
    train_eval_loss = evaluate(net, train_ids, device)
    metrics = round_floats(
        {
            "split": f"test = last {cfg.test_fraction:.0%} of the normalised corpus "
            f"({len(test_ids)} chars); "
            f"validation = last {cfg.val_fraction:.0%} of the rest ({len(val_ids)} chars)",
            "perplexity": math.exp(test_loss),
            "test_perplexity": math.exp(test_loss),
            "test_loss": test_loss,
            "val_perplexity": math.exp(stopper.best),
            "train_perplexity": math.exp(train_eval_loss),
            "best_epoch": stopper.best_epoch,
            "epochs_run": len(history),
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "test_chars": len(test_ids),
        }
    )
    logger.info(
        "best epoch %d: val ppl %.3f, test ppl %.3f (%.0fs)",
        stopper.best_epoch,
        math.exp(stopper.best),
        math.exp(test_loss),
        time.perf_counter() - start,
    )
    return CharLMTrainResult(
        model=net.cpu().eval(), vocab=vocab, arch=arch, metrics=metrics, history=history
    )


def charlm_config_json(
    result: CharLMTrainResult, name: str, version: int, normalization: str, training: dict
) -> dict:
    """The config.json of a trained char LM."""
    return {
        "name": name,
        "version": version,
        "kind": ModelKind.CHARLM.value,
        "architecture": result.arch.to_dict(),
        "vocab": result.vocab.idx_to_token,
        "text": {"normalization": normalization, "training_normalization": "d2l"},
        "generation": {"default_max_tokens": 100},
        "training": {**training, "history": result.history},
        "metrics": result.metrics,
    }


def train_config_dict(cfg: CharLMTrainConfig) -> dict:
    return asdict(cfg)
