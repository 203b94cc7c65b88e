"""``rlcadence report``: one self-contained HTML page (images inlined) plus the PNGs beside it."""

from __future__ import annotations

import html
from pathlib import Path

from rlcadence.reporting.plots import PANELS, data_uri, metrics_figure, panel_figure


def _last(rows: list[dict], column: str):
    vals = [r[column] for r in rows if r.get(column) is not None]
    return vals[-1] if vals else None


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def run_table(series: dict[str, list[dict]]) -> str:
    """One line per run: steps committed, last reward, held-out accuracy at the first and last evaluation."""
    head = "<tr><th>run</th><th>steps</th><th>last reward</th><th>first held-out</th><th>last held-out</th></tr>"
    body = []
    for label, rows in series.items():
        evals = [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None]
        body.append(f"<tr><td>{html.escape(label)}</td><td>{len(rows)}</td><td>{_fmt(_last(rows, 'reward_mean'))}</td>"
                    f"<td>{_fmt(evals[0] if evals else None)}</td><td>{_fmt(evals[-1] if evals else None)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def write_report(out: Path, series: dict[str, list[dict]], title: str, store: str) -> Path:
    """Write ``index.html``, ``metrics.png`` (all panels) and one ``<metric>.png`` per panel into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    overview = metrics_figure(series, title=title, dpi=100)
    (out / "metrics.png").write_bytes(overview)
    panels = []
    for column, name in PANELS:
        png = panel_figure(series, column, name)
        (out / f"{column}.png").write_bytes(png)
        panels.append(f'<figure><img src="{data_uri(png)}" alt="{html.escape(name)}"><figcaption>'
                      f"{html.escape(name)} (<code>{column}</code>)</figcaption></figure>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} figure{{display:inline-block;margin:8px}}
img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>store: <code>{html.escape(store)}</code> · written from the store's <code>metrics</code> table alone</p>
{run_table(series)}
<h2>All metrics</h2><img src="{data_uri(overview)}" alt="all metrics">
<h2>Per metric</h2>{''.join(panels)}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
