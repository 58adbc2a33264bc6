"""``rnnserve forecast --plot``: observed and predicted points in one PNG (matplotlib, optional).

matplotlib is the ``[plot]`` extra (``pip install 'rnnserve[plot]'``); it is imported only here,
only when a plot is asked for, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence


def have_matplotlib() -> bool:
    """Whether the optional matplotlib is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def forecast_plot(series: Sequence[float], predicted: Sequence[float], path: str, *,
                  title: str = "") -> None:
    """Draw ``series`` (observed, at steps 0..T-1) and ``predicted`` (steps T..) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    observed_x = range(len(series))
    predicted_x = range(len(series), len(series) + len(predicted))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    try:
        ax.plot(observed_x, series, "o-", color="tab:blue", markersize=3, label="observed")
        if series and predicted:  # join the two lines at the last observed point
            ax.plot([len(series) - 1, len(series)], [series[-1], predicted[0]], ":",
                    color="tab:red")
        ax.plot(predicted_x, predicted, "o-", color="tab:red", markersize=3, label="predicted")
        ax.axvline(len(series) - 0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("step")
        ax.set_ylabel("value")
        ax.set_title(title or "forecast")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
