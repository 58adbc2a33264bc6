"""Forecast and ForecastStream: validation, scaling, sessions, and one engine call (seed 002).

Semantics: from a zero state the model runs over every observed point of ``series``; its last
output is the first prediction, and each prediction is fed back as the next input until
``horizon`` points. A session's *series* is every point observed in it, in order; it keeps two
states: after the last observed point, and after the last predicted point (with that last
prediction, the next input). Continuing a session with more points starts from the first, so
``Forecast(B, session)`` gives exactly what one stateless Forecast on the session's whole series
(``A + B``) would give: new observations replace the predictions, as they would in a live
series. Continuing with no points starts from the second: it extends the last forecast exactly
(the points of ``Forecast(A, h1 + h2)`` after the first h1). The session holds both as one
``(2, S, L, H)`` tensor and the last prediction as its ``pending``.

Values cross the API in the data's units; a model whose config records ``scaling`` sees
``(x - mean) / std`` and its predictions are mapped back (sessions keep the model's space).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import torch
from rnnserve.models import LoadedModel, ModelKind
from rnnserve.server.errors import InvalidArgumentError
from rnnserve.server.execution.forecast_engine import ForecastEngine, ForecastJob
from rnnserve.server.execution.threads import StepThreads
from rnnserve.server.metrics import Metrics
from rnnserve.server.serving.registry import ModelRegistry
from rnnserve.server.serving.requests import ForecastChunk, ForecastParams
from rnnserve.server.serving.runner import ServingKind, ServingModel
from rnnserve.server.serving.sessions import Session
from rnnserve.server.serving.store import SessionStoreBackend
from rnnserve.server.serving.turns import abandon_turn, begin_turn, commit_turn
from rnnserve.server.settings import ServerSettings


def make_engine(loaded: LoadedModel, name: str, executor: Executor, metrics: Metrics,
                settings: ServerSettings) -> ForecastEngine:
    """The runner of a forecaster: its continuous-batching forecast engine."""
    return ForecastEngine(
        loaded, name, executor, metrics,
        max_batch_size=settings.max_batch_size, max_active=settings.max_active_forecasts,
        max_steps_per_iteration=settings.max_steps_per_iteration,
        batch_invariant=settings.forecast_batch_invariant,
        threads=StepThreads(settings.torch_threads),
    )


FORECASTING: ServingKind[ForecastEngine] = ServingKind(
    ModelKind.FORECAST, "forecaster", make_engine,
)


class Forecasting:
    """The serving logic behind the ForecastService."""

    def __init__(self, registry: ModelRegistry, sessions: SessionStoreBackend,
                 settings: ServerSettings, metrics: Metrics) -> None:
        self._registry = registry
        self._sessions = sessions
        self._settings = settings
        self._metrics = metrics

    def validate(self, params: ForecastParams) -> None:
        """Check every field that does not depend on the model."""
        s = self._settings
        if params.horizon < 1:
            raise InvalidArgumentError("horizon", "must be at least 1")
        if params.horizon > s.max_horizon:
            raise InvalidArgumentError(
                "horizon", f"{params.horizon} is past the limit of {s.max_horizon}")
        if not params.series and not params.session_id:
            raise InvalidArgumentError("series", "must not be empty unless session_id is set")
        if len(params.series) > s.max_series_points:
            raise InvalidArgumentError(
                "series", f"has {len(params.series)} values, more than the limit of "
                f"{s.max_series_points}")
        for i, value in enumerate(params.series):
            if not math.isfinite(value):
                raise InvalidArgumentError(f"series[{i}]", f"{value} is not a finite number")

    async def forecast(self, params: ForecastParams) -> AsyncIterator[ForecastChunk]:
        """Run one forecast; yields chunks of predicted values as the engine produces them."""
        self.validate(params)
        entry, session, fresh = await begin_turn(
            self._registry, self._sessions, FORECASTING, params.model, params.session_id,
            params.keep_session)
        try:
            job, observed = self._job(entry, session, params)
            entry.runner.submit(job)
        except BaseException:
            await abandon_turn(self._sessions, session, fresh)
            raise
        self._metrics.forecast_points.labels(entry.name, "observed").inc(observed)
        session_id = session.id if session is not None else ""
        unscale = _unscaler(entry.loaded)
        completed = False
        try:
            while True:
                values, predicted = await job.outbox.take()
                done = job.outbox.done
                yield ForecastChunk(
                    values=unscale(values), session_id=session_id, done=done,
                    observed_points=observed, predicted_points=predicted,
                    model=entry.name, model_version=entry.version,
                )
                if done:
                    completed = True
                    return
        finally:
            job.outbox.cancelled = not completed
            if completed and session is not None:
                state, pending = self._session_state(session, job, observed)
                await commit_turn(self._sessions, session, fresh, state, pending,
                                  added_tokens=observed + job.outbox.predicted)
            else:
                await abandon_turn(self._sessions, session, fresh)

    def _job(self, entry: ServingModel[ForecastEngine], session: Session | None,
             params: ForecastParams) -> tuple[ForecastJob, int]:
        """The engine's job (model space) and the number of observed points."""
        assets = entry.loaded.assets
        features = assets.features
        if len(params.series) % features:
            raise InvalidArgumentError(
                "series", f"has {len(params.series)} values; model {entry.name!r} takes "
                f"{features} features per point, so it must be a multiple of {features}")
        x = torch.tensor(params.series, dtype=torch.float32).view(-1, features)  # (T, F)
        if assets.scaling is not None:
            x = (x - torch.tensor(assets.scaling.mean)) / torch.tensor(assets.scaling.std)
        device = entry.loaded.device
        x = x.to(device)
        if session is not None and session.state is not None:
            observed, predicted = session.state.to(device)  # (S, L, H) each; Redis: CPU
            if x.shape[0]:
                return ForecastJob(x, observed, params.horizon), x.shape[0]
            pending = session.pending.to(device).view(1, features)
            return ForecastJob(pending, predicted, params.horizon), 0
        if x.shape[0] == 0:
            raise InvalidArgumentError("series", "must not be empty: the session holds no state")
        return ForecastJob(x, None, params.horizon), x.shape[0]

    @staticmethod
    def _session_state(session: Session, job: ForecastJob, observed: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """What a finished job leaves in its session: the states after the last observed and
        the last predicted point, as one ``(2, S, L, H)`` tensor, and the last prediction."""
        end = job.outbox.end
        observed_state = end.observed
        if observed == 0 and session.state is not None:  # extended: no new observation
            observed_state = session.state[0].to(end.predicted.device)
        return torch.stack([observed_state, end.predicted]), end.pending

def _unscaler(loaded: LoadedModel):  # noqa: ANN202 - a small closure
    """Model-space values -> the data's units (identity without scaling)."""
    scaling = loaded.assets.scaling
    if scaling is None:
        return tuple
    mean, std, n = scaling.mean, scaling.std, len(scaling.mean)
    return lambda values: tuple(v * std[i % n] + mean[i % n] for i, v in enumerate(values))
