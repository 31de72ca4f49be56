"""The curation report: histograms before and after (counts in SQL, bars in PNG), the JSON, the printout.

Histograms count in duckdb (a bin index per row, grouped), so only ``bins`` numbers per column
reach Python. Aspects are binned on their own range [0, 1]; the reward on the range it takes over
the ``ok`` rows. PNGs are written without matplotlib's version stamp, so the same counts give the
same bytes.
"""

from __future__ import annotations

import io
import json

from qeval_ray.curate.expression import quote

ABOUT_PNG = {"Software": None}  # matplotlib stamps its version by default


def histogram(con, relation: str, column: str, lo: float, hi: float, bins: int) -> list[int]:
    """Counts of ``column``'s finite values of ``relation`` in ``bins`` equal bins over [lo, hi]."""
    width = (hi - lo) / bins
    x = f"CAST({quote(column)} AS DOUBLE)"
    rows = con.execute(
        f"SELECT least(greatest(CAST(floor(({x} - ?) / ?) AS BIGINT), 0), ? - 1) AS b, count(*) FROM {relation} "
        f"WHERE {x} IS NOT NULL AND isfinite({x}) GROUP BY b ORDER BY b", [lo, width, bins]).fetchall()
    counts = [0] * bins
    for b, n in rows:
        counts[int(b)] = int(n)
    return counts


def value_range(con, relation: str, column: str) -> tuple[float, float]:
    x = f"CAST({quote(column)} AS DOUBLE)"
    lo, hi = con.execute(f"SELECT min({x}), max({x}) FROM {relation} WHERE isfinite({x})").fetchone()
    if lo is None:
        return 0.0, 1.0
    if lo == hi:
        return float(lo) - 0.5, float(hi) + 0.5
    return float(lo), float(hi)


def plot(column: str, edges: list[float], before: list[int], after: list[int]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    widths = [b - a for a, b in zip(edges, edges[1:])]
    ax.bar(edges[:-1], before, width=widths, align="edge", color="0.75", label=f"before ({sum(before)} ok rows)")
    ax.bar(edges[:-1], after, width=widths, align="edge", color="C0", alpha=0.85, label=f"after ({sum(after)} kept)")
    ax.set(xlabel=column, ylabel="rows", title=f"{column}: before and after curation")
    ax.legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, top=0.9, bottom=0.15)  # fixed: tight_layout costs seconds
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata=ABOUT_PNG)
    plt.close(fig)
    return buf.getvalue()


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def format_report(report: dict, output: str) -> str:
    """The lines the job prints."""
    counts = report["counts"]
    lines = [f"qeval-ray curate: {counts['rows_in']} score rows in, {counts['kept']} kept in "
             f"{report['groups']['groups']} groups, {report['pairs']['written']} pairs"]
    for step in counts["steps"]:
        detail = ""
        if step.get("by_status"):
            detail = " (" + ", ".join(f"{k} {v}" for k, v in sorted(step["by_status"].items())) + ")"
        lines.append(f"  after {step['rule']}: {step['rows']} rows (-{step['dropped']}){detail}")
    g, a = report["groups"], report["advantages"]
    lines.append(f"  groups: {g['groups']} ({g['groups_of_one']} of one, {a['groups_zero_spread']} without "
                 f"spread: their {a['rows_zero']} rows get advantage 0)")
    p = report["pairs"]
    if p["mode"] != "none":
        left = ", ".join(f"{k} {v}" for k, v in p["left_out"].items() if v)
        lines.append(f"  pairs ({p['mode']}): {p['candidates']} candidates, {p['written']} written"
                     + (f"; left out: {left}" if left else ""))
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    lines.append(f"  -> {output}")
    return "\n".join(lines)
