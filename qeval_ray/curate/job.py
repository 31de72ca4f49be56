"""jobs/curate.py: scores in, training data out (``qeval_ray.curate`` explains the parts).

Everything is decided before the plan runs: the options (``CurateConfig.validate``), the output
(empty, or an earlier curation), the scores' files and columns, the reward expression and every
rule's columns. Then duckdb runs the plan in memory, spilling to a temporary folder beyond
``--memory-limit``, and the files are written in a staging directory and published together,
``curation.json`` last.

Same scores + same rules -> the same bytes: every output is written in a total order (group key,
then rank; rank is reward descending, then id ascending), by one writer thread, with no time,
host or path of the run in any file.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from dataclasses import dataclass

from qeval_ray import __version__, storage
from qeval_ray.contracts.schema import ID, STATUS, Provenance, Status
from qeval_ray.curate import outputs, report as reporting
from qeval_ray.curate.expression import quote
from qeval_ray.curate.plan import Plan, Rules, literal
from qeval_ray.curate.rules import REWARD, RuleError
from qeval_ray.curate.source import SourceError, open_source, register
from qeval_ray.scorers.qeval import ASPECTS

ROW_GROUP_SIZE = 100_000


class CurateError(ValueError):
    """The curation cannot run; the message says why (a user's mistake, shown as one line)."""


@dataclass
class CurationResult:
    report: dict
    elapsed_s: float
    peak_rss_mb: float
    steps_s: dict[str, float]  # where the time went (printed; never in curation.json, which must rebuild)

    def format(self, output: str) -> str:
        steps = ", ".join(f"{name} {s:.1f}" for name, s in self.steps_s.items())
        return (reporting.format_report(self.report, output)
                + f"\n  {self.elapsed_s:.1f} s ({steps}), peak memory {self.peak_rss_mb:.0f} MB")


def _connect(work: str, config):
    import duckdb

    con = duckdb.connect()  # in memory; beyond --memory-limit its blocks spill to temp_directory
    con.execute(f"SET memory_limit = {literal(config.memory_limit)}")
    con.execute(f"SET temp_directory = {literal(os.path.join(work, 'spill'))}")
    con.execute("SET preserve_insertion_order = true")
    if config.threads:
        con.execute(f"SET threads = {int(config.threads)}")
    return con


def _counts(con, sql: str) -> dict:
    return {reason: int(n) for reason, n in con.execute(f"SELECT _reason, count(*) FROM ({sql}) GROUP BY ALL").fetchall()}


def run_curate_job(config) -> CurationResult:
    start = time.monotonic()
    options = config.storage
    try:
        source = open_source(config.scores, options)
    except SourceError as e:
        raise CurateError(str(e)) from None
    if source.unfinished and not config.allow_incomplete:
        raise CurateError(f"{storage.redact(config.scores)} has no _summary.json: the score run did not finish "
                          "(rerun it to complete, or pass --allow-incomplete)")
    out = outputs.CurationOutput(config.output, options)
    try:
        out.check()
    except outputs.CurationOutputError as e:
        raise CurateError(str(e)) from None
    rules = Rules.of(config)
    with tempfile.TemporaryDirectory(prefix="qeval-curate-") as work:
        con = _connect(work, config)
        try:
            register(con, source, options)
            plan = Plan(con, rules)
        except RuleError as e:
            raise CurateError(str(e)) from None
        staging = os.path.join(work, "out")
        os.makedirs(staging)
        timer = _Timer()
        report = _run(con, plan, source, config, staging, timer)
        con.close()
        out.publish(staging)
        timer.lap("publish")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return CurationResult(report, time.monotonic() - start, peak, timer.seconds)


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _run(con, plan: Plan, source, config, staging: str, timer: "_Timer") -> dict:
    r = plan.rules

    # 1-6: status, media type, generator, missing values, reward, spread.
    con.execute(f"CREATE TEMP VIEW base AS {plan.base_sql()}")
    con.execute(f"CREATE TEMP VIEW stage AS {plan.stage_sql()}")
    first = _counts(con, "SELECT _reason FROM stage")
    timer.lap("count filters")
    narrow = ", ".join(quote(c) for c in plan.narrow())
    con.execute(f"CREATE TABLE pool AS SELECT {narrow} FROM stage WHERE _reason IS NULL")
    timer.lap("pool")
    # 7: bounds (quantiles per generator over the pool).
    cuts = plan.cuts_sql()
    if cuts:
        con.execute(f"CREATE TABLE _cuts AS {cuts}")
    if plan.bounds():
        bounded = plan.bounded_sql()
        second = _counts(con, bounded)
        con.execute(f"CREATE TABLE survivors AS SELECT * EXCLUDE (_reason) FROM ({bounded}) WHERE _reason IS NULL")
    else:
        second = {}
        con.execute("CREATE VIEW survivors AS SELECT * FROM pool")
    timer.lap("bounds")
    duplicated = con.execute(f"SELECT {quote(ID)} FROM survivors GROUP BY ALL HAVING count(*) > 1 "
                             f"ORDER BY 1 LIMIT 3").fetchall()
    if duplicated:
        raise CurateError(f"the scores hold some ids more than once (e.g. {', '.join(repr(d[0]) for d in duplicated)}): "
                          "a curation needs one row per id")

    # Groups: rank, size, mean, std, advantage.
    timer.lap("duplicate ids")
    con.execute(f"CREATE TABLE ranked AS {plan.ranked_sql()}")
    timer.lap("ranked")
    con.execute(f"CREATE TABLE kept AS {plan.kept_sql()}")
    timer.lap("kept")

    # Pairs.
    pair_counts, written = {}, 0
    if r.pairs != "none":
        con.execute(f"CREATE TABLE pair_candidates AS {plan.candidates_sql()}")
        timer.lap("pair candidates")
        pair_counts = _counts(con, "SELECT _reason FROM pair_candidates")
        cap = f"_n <= {int(r.max_pairs_per_group)}" if r.max_pairs_per_group else "true"
        con.execute(f"CREATE TABLE pairs_kept AS SELECT * FROM ({plan.capped_sql()}) WHERE {cap} "
                    f"ORDER BY {plan.pairs_order()}")
        written = con.execute("SELECT count(*) FROM pairs_kept").fetchone()[0]
        timer.lap("pairs")

    report = _report(con, plan, source, config, first, second, pair_counts, written)
    timer.lap("report")

    # The files: one writer thread, tables already in their order.
    con.execute("SET threads = 1")
    pair_columns = ", ".join(quote(c) for c in plan.pair_columns())
    copy = f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
    con.execute(f"COPY (SELECT * FROM kept) TO {literal(os.path.join(staging, outputs.KEPT))} {copy}")
    timer.lap("write kept")
    if r.pairs != "none":
        con.execute(f"COPY (SELECT {pair_columns} FROM pairs_kept) TO "
                    f"{literal(os.path.join(staging, outputs.PAIRS_PARQUET))} {copy}")
        con.execute(f"COPY (SELECT {pair_columns} FROM pairs_kept) TO "
                    f"{literal(os.path.join(staging, outputs.PAIRS_JSONL))} (FORMAT json)")
        timer.lap("write pairs")
    if config.plots:
        folder = os.path.join(staging, outputs.HISTOGRAMS)
        os.makedirs(folder)
        for column, h in report["histograms"].items():
            with open(os.path.join(folder, f"{column}.png"), "wb") as f:
                f.write(reporting.plot(column, h["edges"], h["before"], h["after"]))
    with open(os.path.join(staging, outputs.REPORT), "w", encoding="utf-8") as f:
        f.write(reporting.to_json(report))
    timer.lap("plots and report")
    return report


def _report(con, plan: Plan, source, config, first: dict, second: dict, pair_counts: dict, written: int) -> dict:
    r = plan.rules
    rows_in = source.total_rows
    steps, remaining = [], rows_in
    statuses = {k.split(":", 1)[1]: v for k, v in first.items() if k and k.startswith("status:")}
    names = [("status", "status ok", sum(statuses.values()))]
    if r.media_type:
        names.append(("media_type", f"media type in {','.join(r.media_type)}", first.get("media_type", 0)))
    if r.generators:
        names.append(("generator", f"{r.generator_column} in {','.join(r.generators)}", first.get("generator", 0)))
    names.append(("missing", f"a value in each of {','.join(plan.needed())}", first.get("missing", 0)))
    names.append(("reward", "a finite reward", first.get("reward", 0)))
    if r.max_std is not None:
        names.append(("max_std", f"spread <= {r.max_std!r}", first.get("max_std", 0)))
    for key, rule, dropped in names:
        remaining -= dropped
        step = {"rule": rule, "dropped": dropped, "rows": remaining}
        if key == "status":
            step["by_status"] = statuses
        steps.append(step)
    for side, t in plan.bounds():
        dropped = second.get(f"{side} {t.text()}", 0)
        remaining -= dropped
        what = f"{t.column} {'>=' if side == 'min' else '<='} " + (
            f"its generator's {t.value!r} quantile" if t.quantile else repr(t.value))
        steps.append({"rule": f"--{side} {t.text()} ({what})", "dropped": dropped, "rows": remaining})

    kept = con.execute("SELECT count(*) FROM kept").fetchone()[0]
    survivors = con.execute("SELECT count(*) FROM ranked").fetchone()[0]
    assert survivors == remaining, (survivors, remaining)  # every row is counted once
    if r.top_k:
        steps.append({"rule": f"--top-k {r.top_k} per group (by reward; ties: the smaller id first)",
                      "dropped": survivors - kept, "rows": kept})
    # One row per group: its first-ranked row carries the group's size, mean and std.
    groups = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE group_size = 1), "
        f"count(*) FILTER (WHERE {plan.zero_spread_sql()}), "
        f"coalesce(sum(group_size) FILTER (WHERE {plan.zero_spread_sql()}), 0), min(group_size), max(group_size), "
        f"avg(group_size) FROM ranked WHERE rank = 1").fetchone()
    n_groups, of_one, flat, rows_flat, smallest, largest, mean_size = groups
    rows_of_one = of_one
    sizes = dict(con.execute("SELECT group_size, count(*) FROM ranked WHERE rank = 1 GROUP BY 1 ORDER BY 1").fetchall())
    ties = 0
    if r.top_k:
        on = " AND ".join(f"a.{quote(c)} = b.{quote(c)}" for c in r.group_by)
        ties = con.execute(f"SELECT count(*) FROM ranked a JOIN ranked b ON {on} AND a.rank = {int(r.top_k)} "
                           f"AND b.rank = {int(r.top_k) + 1} AND a.{quote(REWARD)} = b.{quote(REWARD)}").fetchone()[0]

    pairs = {"mode": r.pairs, "candidates": sum(pair_counts.values()), "written": int(written), "left_out": {},
             "per_group": {}}
    if r.pairs != "none":
        passed = pair_counts.get(None, 0)
        pairs["left_out"] = {"equal_rewards": pair_counts.get("equal_rewards", 0),
                             "min_margin": pair_counts.get("min_margin", 0),
                             "uncertain_member": pair_counts.get("uncertain", 0),
                             "cap": passed - int(written)}
        g = ", ".join(quote("_g_" + c) for c in r.group_by)
        per_group = dict(con.execute(f"SELECT n, count(*) FROM (SELECT count(*) AS n FROM pairs_kept GROUP BY {g}) "
                                     "GROUP BY n ORDER BY n").fetchall())
        without = int(n_groups) - sum(per_group.values())  # groups with no pair
        per_group = sorted({**({0: without} if without else {}), **per_group}.items())
        pairs["per_group"] = {str(n): int(c) for n, c in per_group}
        margins = con.execute("SELECT min(margin), avg(margin), max(margin) FROM pairs_kept").fetchone()
        pairs["margin"] = dict(zip(("min", "mean", "max"), margins))

    histograms = _histograms(con, plan, config)
    warnings = []
    provenance = _provenance(con, plan)
    if len({(p.get("scorer_model"), p.get("prompt_version")) for p in provenance}) > 1:
        warnings.append("the kept rows come from more than one scorer or prompt version: their rewards are "
                        "not on one scale (see provenance)")
    if of_one == n_groups and n_groups:
        warnings.append(f"every group has one row: is --group-by {','.join(r.group_by)} right?")
    if ties:
        warnings.append(f"{ties} groups have a tie across the top-{r.top_k} boundary (broken by id)")
    return {
        "qeval_ray_version": __version__,
        "input": source.describe(),
        "rules": r.as_dict(plan.reward),
        "counts": {"rows_in": rows_in, "steps": steps, "kept": int(kept), "top_k_ties_at_boundary": int(ties)},
        "groups": {"groups": int(n_groups), "groups_of_one": int(of_one), "rows_in_groups_of_one": int(rows_of_one),
                   "size_min": smallest, "size_max": largest, "size_mean": mean_size,
                   "sizes": {str(k): int(v) for k, v in sizes.items()}},
        "advantages": {"std": r.advantage_std, "groups_zero_spread": int(flat), "rows_zero": int(rows_of_one + rows_flat),
                       "groups_of_one": int(of_one)},
        "pairs": pairs,
        "histograms": histograms,
        "provenance": {"rows": provenance, "score_run": (source.summary or {}).get("provenance")},
        "columns": {"reward": plan.reward.columns, "spread": plan.spread_columns, "derived": sorted(plan.derived)},
        "warnings": warnings,
    }


def _histograms(con, plan: Plan, config) -> dict:
    before = f"(SELECT * FROM stage WHERE {quote(STATUS)} = {literal(Status.OK)})"
    out = {}
    columns = [a for a in ASPECTS if a in plan.types] + [REWARD]
    for column in columns:
        lo, hi = (0.0, 1.0) if column in ASPECTS else reporting.value_range(con, before, column)
        width = (hi - lo) / config.bins
        out[column] = {"edges": [lo + k * width for k in range(config.bins)] + [hi],
                       "before": reporting.histogram(con, before, column, lo, hi, config.bins),
                       "after": reporting.histogram(con, "kept", column, lo, hi, config.bins)}
    return out


def _provenance(con, plan: Plan) -> list[dict]:
    """Who scored the kept rows: each distinct provenance with its row count."""
    fields = [f for f in Provenance.__dataclass_fields__ if f in plan.types]
    if not fields:
        return []
    cols = ", ".join(quote(f) for f in fields)
    rows = con.execute(f"SELECT {cols}, count(*) FROM kept GROUP BY ALL ORDER BY ALL").fetchall()
    return [{**dict(zip(fields, row[:-1])), "rows": int(row[-1])} for row in rows]
