"""The recurrent-layer options every architecture here shares (char LM, forecaster): the cell,
the rnn cell's nonlinearity, dropout between layers — the options of torch's ``nn.RNN``/``nn.GRU``/
``nn.LSTM`` that seeds 000 and 002 use."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

Cell = Literal["rnn", "gru", "lstm"]
CELLS: tuple[str, ...] = ("rnn", "gru", "lstm")
NONLINEARITIES = ("tanh", "relu")


def check_recurrent(cell: str, nonlinearity: str, dropout: float) -> None:
    """Raises ValueError naming the option that torch's recurrent layers would not take."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {list(CELLS)}, not {cell!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', not {nonlinearity!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError("dropout must be in [0, 1)")


def architecture_dict(config: Any) -> dict:
    """A frozen architecture dataclass as config.json's ``"architecture"``: ``nonlinearity`` is
    written only for the rnn cell (the others have none)."""
    d = asdict(config)
    if d.get("cell") != "rnn":
        d.pop("nonlinearity", None)
    return d
