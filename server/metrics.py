"""Every Prometheus metric the server exports, defined in one place.

Each server instance owns its own ``CollectorRegistry`` (so several servers can live in one
process, as they do in the tests). Names follow Prometheus conventions: ``rnnserve_`` prefix,
base units (seconds, bytes), ``_total`` counters.

With ``--workers N`` every worker writes its samples to ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode) and the supervisor serves one /metrics for all of them:
counters and histograms add up; gauges say how they combine (``multiprocess_mode``: ``livesum``
for amounts, ``max`` for flags and store-wide values). Gauges computed at scrape time (session
age, idle time) are per process and stay 0 in multiprocess mode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
TOKEN_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SESSION_AGE_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
STORE_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


class Metrics:
    """The server's metrics, registered in a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "rnnserve_requests_total",
            "RPCs finished, by method, model, status code and protocol (rnnserve or oip).",
            ["method", "model", "code", "protocol"], registry=r,
        )
        self.request_duration = Histogram(
            "rnnserve_request_duration_seconds",
            "RPC latency from arrival to the last byte sent, by method, model and protocol.",
            ["method", "model", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge(
            "rnnserve_requests_in_flight", "RPCs being served now.", ["method"], registry=r,
            multiprocess_mode="livesum",
        )
        self.time_to_first_token = Histogram(
            "rnnserve_time_to_first_token_seconds",
            "Time from a generation's (or forecast's) arrival to its first generated character "
            "(or predicted point).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inter_token_latency = Histogram(
            "rnnserve_inter_token_latency_seconds",
            "Time between consecutive decode steps of one generation.",
            ["model"], buckets=TOKEN_LATENCY_BUCKETS, registry=r,
        )
        self.generated_tokens = Counter(
            "rnnserve_generated_tokens_total", "Characters generated.", ["model"], registry=r,
        )
        self.prefix_tokens = Counter(
            "rnnserve_prefix_tokens_total", "Prefix characters consumed in prefill.",
            ["model"], registry=r,
        )
        self.forecast_points = Counter(
            "rnnserve_forecast_points_total",
            "Points of forecast series, by phase: observed (sent) or predicted.",
            ["model", "phase"], registry=r,
        )
        self.active_forecasts = Gauge(
            "rnnserve_active_forecasts", "Forecasts predicting now.", ["model"], registry=r,
        )
        self.classified_texts = Counter(
            "rnnserve_classified_texts_total", "Texts classified.", ["model"], registry=r,
        )
        self.stream_messages = Counter(
            "rnnserve_stream_messages_total",
            "GenerateStream messages sent (fewer than characters when a slow client's are coalesced).",
            ["model"], registry=r,
        )
        self.active_generations = Gauge(
            "rnnserve_active_generations", "Generations decoding now.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "rnnserve_queue_depth", "Work admitted but not yet started, by model and engine.",
            ["model", "engine"], registry=r, multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "rnnserve_batch_size", "Sequences (or texts) per model call, by engine.",
            ["model", "engine"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "rnnserve_rejected_total", "Work refused by admission control, by model and limit.",
            ["model", "limit"], registry=r,
        )
        self.cancelled_generations = Counter(
            "rnnserve_cancelled_generations_total",
            "Generations that left the batch because their client cancelled or timed out.",
            ["model"], registry=r,
        )
        self.sessions_active = Gauge(
            "rnnserve_sessions_active", "Sessions held, by model.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.session_state_bytes = Gauge(
            "rnnserve_session_state_bytes", "Bytes of hidden state held by sessions, by model.",
            ["model"], registry=r,
            multiprocess_mode="livesum",
        )
        self.sessions_removed = Counter(
            "rnnserve_sessions_removed_total",
            "Sessions removed, by reason (ended, expired, evicted, unloaded).",
            ["model", "reason"], registry=r,
        )
        self.session_lifetime = Histogram(
            "rnnserve_session_lifetime_seconds", "Age of sessions when they were removed.",
            ["reason"], buckets=SESSION_AGE_BUCKETS, registry=r,
        )
        self.session_oldest_age = Gauge(
            "rnnserve_session_oldest_age_seconds", "Age of the oldest live session.", registry=r,
        )
        self.session_max_idle = Gauge(
            "rnnserve_session_max_idle_seconds",
            "Idle time of the least recently used live session.", registry=r,
        )
        self.model_info = Gauge(
            "rnnserve_model_info", "Loaded model versions (value 1), with their description.",
            ["model", "version", "kind", "device", "architecture"], registry=r,
            multiprocess_mode="max",
        )
        self.model_ready = Gauge(
            "rnnserve_model_ready", "1 when the model serves, 0 while loading or failed.",
            ["model"], registry=r, multiprocess_mode="max",
        )
        self.session_store_duration = Histogram(
            "rnnserve_session_store_duration_seconds",
            "Round trip of one session store operation (Redis only), by operation.",
            ["op"], buckets=STORE_LATENCY_BUCKETS, registry=r,
        )
        self.session_store_errors = Counter(
            "rnnserve_session_store_errors_total",
            "Session store operations that failed, by kind (connection, timeout, response).",
            ["kind"], registry=r,
        )
        self.session_store_up = Gauge(
            "rnnserve_session_store_up",
            "1 while the session store answers (always 1 for the memory store), else 0.",
            registry=r, multiprocess_mode="min",
        )
        self.session_store_sessions = Gauge(
            "rnnserve_session_store_sessions",
            "Sessions in the shared store (Redis only; store-wide, the same on every worker and "
            "replica: take max(), not sum()).",
            registry=r, multiprocess_mode="max",
        )
        self.session_store_up.set(1)

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: for the metrics every call touches, whose label
        values are bounded and whose children are never removed (prometheus_client's
        ``labels`` takes a lock and builds the key on each use)."""
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_session_age_functions(
        self, oldest_age: Callable[[], float], max_idle: Callable[[], float]
    ) -> None:
        """Have the session age gauges computed at scrape time."""
        self.session_oldest_age.set_function(oldest_age)
        self.session_max_idle.set_function(max_idle)


class MetricsHttpServer:
    """The /metrics HTTP endpoint, served from a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._metrics, self._host, self._port = metrics, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (meaningful after start)."""
        return self._server.server_port if self._server else self._port

    def start(self) -> None:
        """Serve /metrics; a port already taken is an OSError that names the address."""
        try:
            self._server, self._thread = start_http_server(
                self._port, addr=self._host, registry=self._metrics.registry
            )
        except OSError as err:
            raise OSError(err.errno, f"metrics port {self._host}:{self._port}: {err.strerror} "
                          "(choose another with --metrics-port, or -1 for none)") from None
        logger.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
