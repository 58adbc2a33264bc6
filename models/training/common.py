"""Shared training utilities: seeding, device and thread selection, early stopping, progress."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

T = TypeVar("T")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, torch (CPU and CUDA); returns a CPU generator for data order."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given, else ``cuda`` when available, else ``cpu``."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (reproducibility); returns the count in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def progress(
    iterable: Iterable[T], desc: str, enabled: bool = True, total: int | None = None
) -> Iterator[T]:
    """A tqdm progress bar on stderr (or the bare iterable when disabled)."""
    if not enabled:
        return iter(iterable)
    return iter(
        tqdm(
            iterable,
            desc=desc,
            total=total,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5,
        )
    )


@dataclass
class EarlyStopping:
    """Tracks the best validation score, keeps a copy of the best weights, says when to stop.

    ``mode="min"`` for losses, ``"max"`` for accuracies. Stops after ``patience`` epochs without
    an improvement of more than ``min_delta``.
    """

    patience: int
    mode: str = "min"
    min_delta: float = 0.0
    best: float = field(init=False)
    best_epoch: int = field(default=-1, init=False)
    best_state: dict | None = field(default=None, init=False)
    bad_epochs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int, module: nn.Module) -> bool:
        """Record an epoch's score; returns True when training should stop."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in module.state_dict().items()}
            )
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best weights back into ``module``."""
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def round_floats(obj: object, ndigits: int = 6) -> object:
    """Round floats in nested dicts/lists (for readable config.json metrics)."""
    if isinstance(obj, float):
        return round(obj, ndigits)
    if isinstance(obj, dict):
        return {k: round_floats(v, ndigits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, ndigits) for v in obj]
    return obj
