"""Server settings: one typed object, read once at the entry point and passed down.

Precedence (highest first): command-line flags, ``RNNSERVE_*`` environment variables, the optional
settings file (``--config`` / ``RNNSERVE_CONFIG``, JSON or TOML), then the defaults below.
"""

from __future__ import annotations

import json
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Everything the server can be told. Each field is also ``RNNSERVE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="forbid", frozen=True)

    # --- network -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    metrics_host: str = Field("127.0.0.1", description="Address the /metrics HTTP server binds.")
    metrics_port: int = Field(
        8000, ge=-1, le=65535, description="Prometheus /metrics port (0 picks a free port, -1 off)."
    )
    max_message_bytes: int = Field(
        4 * 2**20, ge=1024, description="Largest gRPC message accepted or sent, in bytes."
    )
    grace_period_s: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight calls may run before being cut."
    )
    max_concurrent_streams: int = Field(
        1024, ge=1, description="Most calls in flight on one client connection (HTTP/2 streams); "
        "well above the callers a client runs on one channel, so that stream churn never turns "
        "into REFUSED_STREAM (UNAVAILABLE).",
    )
    keepalive_min_ping_interval_s: float = Field(
        1.0, gt=0, description="Shortest interval at which clients may send HTTP/2 keepalive "
        "pings (also with no call in flight); faster pings are answered with GOAWAY.",
    )
    max_health_watches: int = Field(
        100, ge=1, description="Most concurrent grpc.health.v1 Watch streams (open to every "
        "client); past it a new Watch is RESOURCE_EXHAUSTED.",
    )
    default_deadline_s: float = Field(
        300.0, ge=0,
        description="Deadline the server applies to a call that brings none (0 = none).",
    )

    # --- security (docs/security.md) -----------------------------------------------------------
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate (chain); with tls_key_file, serve TLS only."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed "
        "(mutual TLS).",
    )
    auth_tokens_file: Path | None = Field(
        None, description="File of bearer tokens, one per line ('#' comments); when set (or "
        "auth_tokens), every call but health needs 'authorization: Bearer <token>'.",
    )
    auth_tokens: SecretStr = Field(
        SecretStr(""), description="Bearer tokens, comma separated (prefer the environment "
        "variable or the file to a flag).",
    )
    admin_enabled: bool = Field(
        False, description="Serve the AdminService (load, unload, reload model versions)."
    )
    admin_token: SecretStr = Field(
        SecretStr(""), description="Bearer token the AdminService requires (not a data token)."
    )
    admin_token_file: Path | None = Field(
        None, description="File holding the admin token (first line); wins over admin_token."
    )

    # --- models --------------------------------------------------------------------------------
    model_repository: Path = Field(
        Path("model_repository"), description="Folder of <name>/<version>/{config.json,model.pt}."
    )
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'.")
    default_generation_model: str = Field(
        "", description="Model used when a Generate request names none ('' = the first charlm "
        "ready at start, by name, kept while it is loaded: adding a model never moves it).",
    )
    default_classifier: str = Field(
        "", description="Model used when a Classify request names none ('' = the first "
        "classifier ready at start, by name, kept while it is loaded).",
    )
    default_forecaster: str = Field(
        "", description="Model used when a Forecast request names none ('' = first forecaster)."
    )
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads per model step (0 = chosen per step by its "
        "size: one per 32 rows, at most the usable cores minus one; see server/execution/threads.py).",
    )
    batch_invariant: bool = Field(
        True, description="Batch-invariant execution of char LMs and classifiers (forecasters: "
        "forecast_batch_invariant): every text and score is bit-identical alone and in any "
        "batch. false trades that for speed (README: 'Batch invariance' has the measured cost); "
        "answers then change in the last bits with their batch mates.",
    )
    max_checkpoint_bytes: int = Field(
        512 * 2**20, ge=1, description="Largest model.pt accepted, in bytes (checked before reading)."
    )
    model_repository_poll_s: float = Field(
        0.0, ge=0, description="How often the repository is polled for new model versions "
        "(0 = never; the AdminService can still reload).",
    )
    reload_drain_s: float = Field(
        60.0, ge=0, description="On a version swap, how long in-flight work on the old version "
        "may run before the old engine is stopped.",
    )

    # --- generation ----------------------------------------------------------------------------
    default_max_tokens: int = Field(100, ge=1, description="max_tokens used when a request sends 0.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask.")
    max_prefix_chars: int = Field(
        16384, ge=1, description="Longest prefix (characters) a request may send."
    )
    max_stop_strings: int = Field(8, ge=0, description="Most stop strings per request.")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop string (characters).")
    max_batch_size: int = Field(
        64, ge=1, description="Most sequences advanced in one decode step (1 = no batching)."
    )
    max_active_generations: int = Field(
        512, ge=1, description="Generations running or queued per model; past it RESOURCE_EXHAUSTED."
    )
    max_steps_per_iteration: int = Field(
        8, ge=1, description="Decode steps run per engine iteration before new work is admitted."
    )
    cuda_graphs: bool = Field(
        True, description="On a CUDA device, run char-LM decode steps on fixed row slots per "
        "batch-size bucket, each bucket's step replayed as a CUDA graph (bit-identical to eager "
        "steps; measured on an H200: steps 2.2-11x, the engine 1.4-4x, docs/gpu.md). No effect "
        "on the CPU. false: eager steps.",
    )
    prefill_chunk_tokens: int = Field(
        64, ge=1, description="Prefix tokens prefilled per engine iteration (chunked prefill: "
        "bounds how long one iteration stalls running streams and the prefill memory; 64 keeps a "
        "stream's p99 gap under 100 ms with batch-invariant prefill, docs/bench.md)."
    )

    # --- forecasting ---------------------------------------------------------------------------
    max_horizon: int = Field(4096, ge=1, description="Largest horizon (points) a Forecast may ask.")
    max_series_points: int = Field(
        65536, ge=1, description="Most observed values (points x features) one Forecast may send."
    )
    forecast_batch_invariant: bool = Field(
        True, description="Run each forecast row with batch-1 kernels (the seed's numbers, "
        "identical alone or batched); false: one batched call per step, faster, last bits may "
        "depend on batch mates.",
    )
    max_active_forecasts: int = Field(
        512, ge=1, description="Forecasts running or queued per model; past it RESOURCE_EXHAUSTED."
    )

    # --- sessions ------------------------------------------------------------------------------
    session_ttl_s: float = Field(600.0, gt=0, description="Idle time after which a session expires.")
    max_sessions: int = Field(
        100_000, ge=1, description="Most sessions kept; past it the least recently used is evicted."
    )
    max_sessions_per_client: int = Field(
        0, ge=0, description="Most sessions one client identity (bearer token) may hold "
        "(0 = no per-client cap; applies only when auth is on).",
    )
    session_sweep_interval_s: float = Field(
        5.0, gt=0, description="How often expired sessions are swept (and the store is checked)."
    )
    session_store: str = Field(
        "memory", description="Where sessions live: 'memory' (this process) or a Redis URL, "
        "redis://HOST:PORT/DB or rediss://HOST:PORT/DB (TLS), shared by workers and replicas.",
    )
    session_store_password: SecretStr = Field(
        SecretStr(""), description="Redis password (prefer the environment variable or the "
        "file to a flag; never logged).",
    )
    session_store_password_file: Path | None = Field(
        None, description="File holding the Redis password (first line); wins over "
        "session_store_password.",
    )
    session_lease_s: float = Field(
        30.0, gt=0, description="Redis store: how long a request's hold on a session lasts "
        "unless renewed; a holder that dies frees the session after this long.",
    )

    # --- scale-out -----------------------------------------------------------------------------
    workers: int = Field(
        1, ge=1, le=256, description="Server processes sharing the gRPC port (SO_REUSEPORT); "
        "more than 1 needs a shared session_store.",
    )
    replica_name: str = Field(
        default_factory=socket.gethostname, description="This replica's name, sent with every "
        "response as 'x-rnnserve-replica: <replica>/<worker pid>' (default: the hostname).",
    )

    # --- classification ------------------------------------------------------------------------
    max_texts_per_call: int = Field(256, ge=1, description="Most texts in one Classify call.")
    max_text_chars: int = Field(8192, ge=1, description="Longest text Classify accepts (characters).")
    classify_max_batch_size: int = Field(
        64, ge=1, description="Most texts scored in one classifier batch (1 = no batching)."
    )
    classify_max_wait_ms: float = Field(
        2.0, ge=0, description="How long a classifier batch may wait to fill up, counted from its "
        "oldest text's arrival (ms); texts that queued while the model was busy go as soon as it "
        "is free.",
    )
    max_queued_texts: int = Field(
        8192, ge=1, description="Texts waiting for the classifier; past it RESOURCE_EXHAUSTED."
    )

    # --- logging -------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")

    def default_model(self, kind: str) -> str:
        """The configured default model of a kind ('' when none is configured)."""
        return _default_model(self, kind)

    @staticmethod
    def default_model_field(kind: str) -> str:
        """The setting that names a kind's default model."""
        return DEFAULT_MODEL_FIELDS.get(kind, "")

    @model_validator(mode="after")
    def _check_security(self) -> ServerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if self.admin_enabled and not (self.admin_token.get_secret_value()
                                       or self.admin_token_file):
            raise ValueError("admin_enabled needs admin_token or admin_token_file")
        store = self.session_store
        if store != "memory" and not store.startswith(("redis://", "rediss://")):
            raise ValueError("session_store must be 'memory' or a redis:// or rediss:// URL")
        if self.workers > 1 and store == "memory":
            raise ValueError(
                f"workers={self.workers} needs a shared session store: with "
                "session_store=memory each worker would hold its own sessions and a session "
                "could not be continued by the others; pass --session-store redis://HOST:PORT/DB "
                "or run one worker"
            )
        return self


DEFAULT_MODEL_FIELDS = {
    "charlm": "default_generation_model",
    "classifier": "default_classifier",
    "forecast": "default_forecaster",
}
"""Model kind -> the setting naming its default model (a new kind adds one row and one field)."""


def _default_model(settings: ServerSettings, kind: str) -> str:
    field = DEFAULT_MODEL_FIELDS.get(kind)
    return str(getattr(settings, field)) if field else ""


def read_settings_file(path: Path) -> dict[str, Any]:
    """Parse a JSON or TOML settings file into field values (keys are field names)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: settings file must hold an object of field names")
    return data


def load_settings(
    overrides: dict[str, Any] | None = None, config_file: Path | None = None
) -> ServerSettings:
    """Build settings: ``overrides`` (flags) win over the environment, which wins over the file."""
    file_values = read_settings_file(config_file) if config_file else {}
    env_values = ServerSettings().model_dump(exclude_unset=True)  # the RNNSERVE_* variables set
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    return ServerSettings(**{**file_values, **env_values, **flags})
