"""The ``rnnserve`` command line: serve, train, and talk to a running server.

``serve`` and ``train`` hand every remaining argument to the server's and the trainer's own
entry points. The other commands are thin wrappers over :class:`rnnserve.client.Client`;
a failed call prints one line, ``error: CODE: details``, to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable

import grpc
import rnnserve

from . import _plot, _render
from ._channel import DEFAULT_TARGET, DEFAULT_TIMEOUT
from ._client import Client
from ._exceptions import RnnserveError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_DELEGATES = {
    "serve": ("rnnserve.server.main", "the rnnserve server"),
    "train": ("rnnserve.models.training.cli", "the rnnserve training command"),
}


class UsageError(Exception):
    """A problem with the command line or its input files (exit 2)."""


# ------------------------------------------------------------------------------ parser


def _connection_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--target",
        default=os.environ.get("RNNSERVE_TARGET", DEFAULT_TARGET),
        help="server address host:port, or several replicas, balanced round robin: "
        "dns:///host:port (every address of the name) or ipv4:h1:p1,h2:p2 "
        "(env RNNSERVE_TARGET; default %(default)s)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="deadline for the call (default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("RNNSERVE_TOKEN"),
        help="send 'authorization: Bearer TOKEN' (env RNNSERVE_TOKEN)",
    )
    group.add_argument("--tls-ca", metavar="FILE", help="use TLS, trusting the CA(s) in FILE")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's CAs")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="mutual TLS: present the client certificate (PEM chain) in FILE; "
                       "implies TLS and needs --tls-key")
    group.add_argument("--tls-key", metavar="FILE",
                       help="mutual TLS: the private key (PEM) of --tls-cert")
    parent.add_argument_group("output").add_argument(
        "--json", action="store_true", help="print JSON instead of text"
    )
    return parent


def _add_generate(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "generate",
        parents=[common],
        help="continue a text with a character language model",
        description="Warm up on PREFIX and print the continuation (never the prefix itself). "
        "Greedy unless --temperature is set.",
        epilog='example: rnnserve generate "time traveller" -n 50 --stream',
    )
    p.add_argument("prefix", nargs="?", default="", help="text to continue (may be empty "
                   "when continuing a --session)")
    p.add_argument("-n", "--max-tokens", type=int, default=0, metavar="N",
                   help="characters to generate (default: the server's)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                   help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, metavar="K",
                   help="sample among the K most likely characters (0 = all)")
    p.add_argument("--top-p", type=float, default=0.0, metavar="P",
                   help="nucleus sampling threshold (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0 = unseeded)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop after generating STR (repeatable)")
    p.add_argument("--session", default="", metavar="ID", help="continue this session")
    p.add_argument("--keep-session", action="store_true",
                   help="keep the state for later; the session id goes to stderr (or the JSON)")
    p.set_defaults(handler=_cmd_generate)


def _add_classify(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "classify",
        parents=[common],
        help="classify the sentiment of texts",
        description="Print label, score (P(positive)) and text for each TEXT.",
        epilog='example: rnnserve classify "a wonderful film" "dull" --explain',
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", metavar="PATH",
                   help="also read one text per line from PATH ('-' = stdin)")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--explain", action="store_true",
                   help=f"show the {_render.TOP_TOKENS} most attended tokens per text")
    p.set_defaults(handler=_cmd_classify)


def _add_forecast(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser(
        "forecast",
        parents=[common],
        help="predict the next points of a series",
        description="Send the observed VALUES of a series (oldest first) and print the next "
        "--horizon predicted points, one per line.",
        epilog="example: rnnserve forecast 0 0.2 0.39 0.56 0.72 --horizon 20 --plot out.png",
    )
    p.add_argument("values", nargs="*", type=float, metavar="VALUE",
                   help="observed values (may be empty when continuing a --session)")
    p.add_argument("--file", metavar="PATH",
                   help="also read values from a CSV/text file: the last numeric column of each "
                   "row ('-' = stdin; a non-numeric first row is a header)")
    p.add_argument("--horizon", type=int, default=10, metavar="N",
                   help="points to predict (default %(default)s)")
    p.add_argument("--model", default="", help="model name (default: the server's default)")
    p.add_argument("--session", default="", metavar="ID", help="continue this session")
    p.add_argument("--keep-session", action="store_true",
                   help="keep the state for later; the session id goes to stderr (or the JSON)")
    p.add_argument("--plot", metavar="PNG",
                   help="draw observed and predicted points to PNG (needs the [plot] extra: "
                   "pip install 'rnnserve[plot]')")
    p.set_defaults(handler=_cmd_forecast)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command except the delegated ``serve``/``train``."""
    parser = argparse.ArgumentParser(
        prog="rnnserve",
        description="gRPC inference server for recurrent neural networks, and its client.",
    )
    parser.add_argument("--version", action="version", version=rnnserve.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _connection_flags()

    for name, (_, what) in _DELEGATES.items():
        commands.add_parser(
            name,
            add_help=False,
            help=f"run {what} (all arguments go to it; see 'rnnserve {name} --help')",
        )
    _add_generate(commands, common)
    _add_classify(commands, common)
    _add_forecast(commands, common)

    p = commands.add_parser(
        "models", parents=[common], help="list the server's models",
        description="Name, version, kind, readiness, device and training metrics per model.",
    )
    p.set_defaults(handler=_cmd_models)

    p = commands.add_parser(
        "end-session", parents=[common], help="end a generation session",
        description="Drop a session's state on the server and print how many tokens it saw.",
    )
    p.add_argument("session_id", metavar="ID", help="the session id")
    p.set_defaults(handler=_cmd_end_session)

    p = commands.add_parser(
        "health", parents=[common], help="check the server's health (exit 0 when SERVING)",
        description="Ask grpc.health.v1 for the status of the server or one service.",
    )
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.set_defaults(handler=_cmd_health)
    return parser


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the ``rnnserve`` command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATES:
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except RnnserveError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `rnnserve generate --stream ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return EXIT_ERROR


def _delegate(command: str, argv: list[str]) -> int:
    module_name, what = _DELEGATES[command]
    try:
        entry = importlib.import_module(module_name).main
    except (ImportError, AttributeError) as error:
        print(f"error: {what} is not available: {error}", file=sys.stderr)
        return EXIT_USAGE
    status = entry(argv)
    return status if isinstance(status, int) else EXIT_OK


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from error


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from the flags: --tls-ca (or --tls: the system's CAs), and for mutual
    TLS a client certificate and key (--tls-cert/--tls-key, both or neither)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    if not (args.tls_ca or args.tls or args.tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca) if args.tls_ca else None,
        private_key=_read(args.tls_key) if args.tls_key else None,
        certificate_chain=_read(args.tls_cert) if args.tls_cert else None,
    )


def _client(args: argparse.Namespace) -> Client:
    credentials = _credentials(args)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    return Client(args.target, timeout=args.timeout, credentials=credentials, metadata=metadata)


# ---------------------------------------------------------------------------- commands


def _cmd_generate(args: argparse.Namespace) -> int:
    options = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
        "session_id": args.session,
        "keep_session": args.keep_session,
    }
    with _client(args) as client:
        if args.stream:
            return _stream(client, args.prefix, options, as_json=args.json)
        result = client.generate(args.prefix, **options)
    if args.json:
        print(_render.to_json(result))
    else:
        print(result.text)
        _report_session(result.session_id)
    return EXIT_OK


def _stream(client: Client, prefix: str, options: dict, *, as_json: bool) -> int:
    session_id = ""
    for chunk in client.stream(prefix, **options):
        session_id = session_id or chunk.session_id
        if as_json:
            print(_render.to_json(chunk, indent=None), flush=True)
        else:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    if not as_json:
        print()
        _report_session(session_id)
    return EXIT_OK


def _report_session(session_id: str) -> None:
    if session_id:
        print(f"session: {session_id}", file=sys.stderr)


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file:
        data = sys.stdin.read() if args.file == "-" else _read(args.file).decode("utf-8")
        texts.extend(line for line in data.splitlines() if line.strip())
    if not texts:
        raise UsageError("no texts given: pass TEXT arguments or --file PATH")
    return texts


def _cmd_classify(args: argparse.Namespace) -> int:
    texts = _texts(args)
    with _client(args) as client:
        results = client.classify(texts, model=args.model, explain=args.explain)
    if args.json:
        rows = [{"text": t, **dataclasses.asdict(r)} for t, r in zip(texts, results, strict=False)]
        print(_render.to_json(rows))
    else:
        print(_render.classifications_table(texts, results, explain=args.explain))
    return EXIT_OK


def _series(args: argparse.Namespace) -> list[float]:
    values = list(args.values)
    if args.file:
        data = sys.stdin.read() if args.file == "-" else _read(args.file).decode("utf-8")
        rows = [line for line in data.splitlines() if line.strip()]
        for i, line in enumerate(rows):
            cell = line.replace(";", ",").split(",")[-1].strip()
            try:
                values.append(float(cell))
            except ValueError:
                if i == 0:
                    continue  # a header row
                raise UsageError(f"{args.file}: line {i + 1}: {cell!r} is not a number") from None
    if not values and not args.session:
        raise UsageError("no values given: pass VALUE arguments or --file PATH")
    return values


def _cmd_forecast(args: argparse.Namespace) -> int:
    series = _series(args)
    if args.plot and not _plot.have_matplotlib():
        raise UsageError("--plot needs matplotlib: pip install 'rnnserve[plot]'")
    with _client(args) as client:
        result = client.forecast(series, args.horizon, model=args.model,
                                 session_id=args.session, keep_session=args.keep_session)
    if args.json:
        print(_render.to_json({"series": series, **dataclasses.asdict(result)}))
    else:
        print("\n".join(f"{v:.6g}" for v in result.values))
        _report_session(result.session_id)
    if args.plot:
        _plot.forecast_plot(series, list(result.values), args.plot,
                              title=f"{result.model} v{result.model_version}")
        print(f"plot: {args.plot}", file=sys.stderr)
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models()
    print(_render.to_json(models) if args.json else _render.models_table(models))
    return EXIT_OK


def _cmd_end_session(args: argparse.Namespace) -> int:
    with _client(args) as client:
        total = client.end_session(args.session_id)
    if args.json:
        print(_render.to_json({"session_id": args.session_id, "total_tokens": total}))
    else:
        print(f"ended session {args.session_id} ({total} tokens)")
    return EXIT_OK


def _cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(_render.to_json({"service": args.service, "status": status}) if args.json else status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
