"""``rnnserve train``: train the char LM or the sentiment classifier and write a model version.

    python -m rnnserve.models.training.cli charlm --corpus FILE --out DIR [options]
    python -m rnnserve.models.training.cli sentiment --pos FILE --neg FILE --out DIR [options]
    python -m rnnserve.models.training.cli forecast --wave sine --out DIR [options]
    python -m rnnserve.models.training.cli forecast --series FILE.csv --out DIR [options]

``--out`` is the version directory (e.g. ``model_repository/timemachine/1``); it receives
``config.json`` (architecture, vocab, text settings, the exact command line and arguments, and
the held-out metrics) and ``model.pt``. Runs are seeded and use a fixed number of torch threads,
so the same command on the same machine reproduces the same metrics. Progress bars and logs go
to stderr; a JSON summary of the metrics is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from ..checkpoint import NAME_RE, save_model
from ..text import CHAR_NORMALIZATIONS, load_corpus
from .charlm import CharLMTrainConfig, charlm_config_json, train_charlm
from .common import file_sha256, seed_everything, select_device, set_threads

logger = logging.getLogger(__name__)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


CHOICES = {"cell": ("rnn", "gru", "lstm"), "nonlinearity": ("tanh", "relu")}
"""Flags whose values are a fixed set (shown by --help, checked by argparse)."""


def _add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _parse_bool if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                            help=f"(default: {f.default})")


def _common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="version directory to write, e.g. model_repository/NAME/1",
    )
    parser.add_argument(
        "--name", default=None, help="model name (default: the parent dir of --out)"
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnserve train",
        description="Train the char LM or the sentiment classifier and write a model version "
        "(config.json + model.pt) into --out.")
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("charlm", help="character language model (seed 000 RNNModel)")
    p.add_argument("--corpus", required=True, type=Path, help="text file (normalised as d2l does)")
    p.add_argument(
        "--normalization",
        choices=CHAR_NORMALIZATIONS,
        default="none",
        help="serving-time character normalisation recorded in config.json (default: none)",
    )
    _add_dataclass_args(p, CharLMTrainConfig)
    _common_args(p)
    from .sentiment import SentimentTrainConfig

    s = sub.add_parser("sentiment", help="SentimentRNN classifier (seed 001)")
    s.add_argument("--pos", required=True, type=Path, help="positive sentences, one per line")
    s.add_argument("--neg", required=True, type=Path, help="negative sentences, one per line")
    _add_dataclass_args(s, SentimentTrainConfig)
    _common_args(s)
    from .forecast import ForecastTrainConfig

    f = sub.add_parser("forecast", help="sequence forecaster (seed 002 Net)")
    data = f.add_mutually_exclusive_group()
    data.add_argument("--wave", choices=["sine"], default=None,
                      help="the seed's synthetic windows (the default)")
    data.add_argument("--series", type=Path, default=None,
                      help="CSV file of a series: one row per point, numeric columns = features")
    f.add_argument("--columns", default="",
                   help="with --series: comma-separated column names or indexes (default: all)")
    _add_dataclass_args(f, ForecastTrainConfig)
    _common_args(f)
    return parser


def _name_version(out: Path, name: str | None) -> tuple[str, int]:
    import re

    name = name or out.resolve().parent.name
    if not re.fullmatch(NAME_RE, name):
        raise SystemExit(f"error: model name {name!r} must match {NAME_RE} (use --name)")
    version = int(out.name) if out.name.isdigit() else 1
    return name, version


def _training_record(
    argv: list[str], args: argparse.Namespace, device: torch.device, threads: int, data: dict
) -> dict:
    arg_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "command": "rnnserve train " + shlex.join(argv),
        "argv": list(argv),
        "args": arg_dict,
        "data": data,
        "device": str(device),
        "threads": threads,
        "torch_version": torch.__version__,
    }


def _run_charlm(argv: list[str], args: argparse.Namespace) -> dict:
    cfg = CharLMTrainConfig(**{f.name: getattr(args, f.name) for f in fields(CharLMTrainConfig)})
    name, version = _name_version(args.out, args.name)
    threads = set_threads(args.threads)
    device = select_device(args.device)
    gen = seed_everything(cfg.seed)
    corpus = load_corpus(args.corpus)
    start = time.perf_counter()
    result = train_charlm(corpus, cfg, device=device, gen=gen, show_progress=not args.no_progress)
    training = _training_record(
        argv,
        args,
        device,
        threads,
        {
            "corpus": str(args.corpus),
            "sha256": file_sha256(args.corpus),
            "normalised_chars": len(corpus),
        },
    )
    training["train_seconds"] = round(time.perf_counter() - start, 1)
    config = charlm_config_json(result, name, version, args.normalization, training)
    save_model(args.out, result.model, config)
    return config["metrics"]


def _run_sentiment(argv: list[str], args: argparse.Namespace) -> dict:
    from .sentiment import (
        SentimentTrainConfig,
        load_polarity,
        sentiment_config_json,
        train_sentiment,
    )

    cfg = SentimentTrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(SentimentTrainConfig)}
    )
    name, version = _name_version(args.out, args.name)
    threads = set_threads(args.threads)
    device = select_device(args.device)
    gen = seed_everything(cfg.seed)
    texts, labels = load_polarity(args.pos, args.neg)
    start = time.perf_counter()
    result = train_sentiment(
        texts, labels, cfg, device=device, gen=gen, show_progress=not args.no_progress
    )
    training = _training_record(
        argv,
        args,
        device,
        threads,
        {
            "pos": str(args.pos),
            "pos_sha256": file_sha256(args.pos),
            "neg": str(args.neg),
            "neg_sha256": file_sha256(args.neg),
            "examples": len(texts),
        },
    )
    training["train_seconds"] = round(time.perf_counter() - start, 1)
    config = sentiment_config_json(result, name, version, training)
    save_model(args.out, result.model, config)
    return config["metrics"]


def _run_forecast(argv: list[str], args: argparse.Namespace) -> dict:
    from .forecast import (
        ForecastTrainConfig,
        forecast_config_json,
        read_series,
        train_series,
        train_sine,
    )

    cfg = ForecastTrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(ForecastTrainConfig)}
    )
    name, version = _name_version(args.out, args.name)
    threads = set_threads(args.threads)
    device = select_device(args.device)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    if args.series is not None:
        columns = [c for c in args.columns.split(",") if c] or None
        try:
            series = read_series(args.series, columns)
            result = train_series(series, cfg, device=device,
                                  show_progress=not args.no_progress)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        data = {"series": str(args.series), "sha256": file_sha256(args.series),
                "points": len(series), "features": series.shape[1]}
    else:
        result = train_sine(cfg, device=device, show_progress=not args.no_progress)
        data = {"wave": "sine", "window": cfg.window, "span": cfg.span, "offsets": cfg.offsets}
    training = _training_record(argv, args, device, threads, data)
    training["train_seconds"] = round(time.perf_counter() - start, 1)
    config = forecast_config_json(result, name, version, training)
    save_model(args.out, result.model, config)
    return config["metrics"]


_RUNS = {"charlm": _run_charlm, "sentiment": _run_sentiment, "forecast": _run_forecast}


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` = the arguments after ``train`` (``charlm ...``|``sentiment ...``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    run = _RUNS[args.task]
    metrics = run(argv, args)
    print(json.dumps({"out": str(args.out), "metrics": metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
