"""The run's curves with matplotlib: six panels over steps, several runs on the same axes."""

from __future__ import annotations

import base64
import io

# (metrics-table column, panel title); a panel with no values says so instead of drawing nothing
PANELS = (
    ("reward_mean", "reward (mean)"),
    ("eval_accuracy", "held-out accuracy"),
    ("rollout_mean_length", "completion length (tokens)"),
    ("train_entropy", "entropy (nats/token)"),
    ("kl_mean", "KL to reference"),
    ("sparsity_unchanged_vs_last_sync", "update sparsity (bf16 unchanged since sync)"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: figures go to bytes
    import matplotlib.pyplot as plt

    return plt


def _points(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    pts = sorted((r["step"], r[column]) for r in rows if r.get(column) is not None)
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _draw(ax, series: dict[str, list[dict]], column: str, title: str) -> None:
    drawn = False
    for label, rows in series.items():
        xs, ys = _points(rows, column)
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.2, label=label)
            drawn = True
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def metrics_figure(series: dict[str, list[dict]], title: str = "", dpi: int = 80) -> bytes:
    """One PNG with the six panels; ``series`` maps a run's label to its metric rows."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), dpi=dpi, layout="constrained")
    for ax, (column, name) in zip(axes.flat, PANELS, strict=True):
        _draw(ax, series, column, name)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(series) > 1 and handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _png(fig)


def panel_figure(series: dict[str, list[dict]], column: str, title: str, dpi: int = 100) -> bytes:
    """One panel alone (the report writes one PNG per metric)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=dpi, layout="constrained")
    _draw(ax, series, column, title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _png(fig)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
