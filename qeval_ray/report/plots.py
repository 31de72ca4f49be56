"""The report's PNG plots, drawn with matplotlib (imported only when plots are made)."""

from __future__ import annotations

import io

import numpy as np

from qeval_ray.report.metrics import logistic4


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def scatter(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str,
            logistic: dict | None = None) -> bytes:
    """Score vs MOS, with the fitted 4-parameter logistic curve where there is one."""
    return _png(scatter_figure(x, y, xlabel=xlabel, ylabel=ylabel, title=title, logistic=logistic), _pyplot())


def scatter_figure(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str,
                   logistic: dict | None = None):
    """The scatter as a matplotlib figure. The legend sits below the axes, outside them: wherever
    the points fall, none is hidden behind it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=100)
    ax.scatter(x, y, s=6, alpha=0.5)
    if logistic and "beta1" in logistic:
        grid = np.linspace(np.min(x), np.max(x), 200)
        ax.plot(grid, logistic4(grid, *(logistic[k] for k in ("beta1", "beta2", "beta3", "beta4"))),
                color="C3", label="4-parameter logistic fit")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def leaderboard(board: list[dict], aspect: str) -> bytes:
    """Generators' mean score vs mean MOS, each labelled with its two ranks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.scatter([r["mean_score"] for r in board], [r["mean_mos"] for r in board])
    for r in board:
        ax.annotate(f"{r['model']} (#{r['rank_score']}/#{r['rank_mos']})", (r["mean_score"], r["mean_mos"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=f"mean {aspect} score", ylabel=f"mean {aspect} MOS",
           title=f"generators by {aspect} (#rank by score/#rank by MOS)")
    return _png(fig, plt)


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
