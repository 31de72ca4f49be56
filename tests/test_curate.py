"""jobs/curate.py on constructed scores with known answers: the reward grammar (and what it refuses),
filters with per-generator quantiles, top-k with ties, pairs in each mode with margins, caps and
uncertain members, advantages (groups of one, of no spread), counts, byte-identical reruns, and
the pairs loading with `datasets`. duckdb only: no Ray, no engine (fast tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from qeval_ray.cli import curate_main
from qeval_ray.curate.expression import ExpressionError, parse

COLUMNS = ["quality", "alignment", "quality_std", "alignment_std"]


def row(id, prompt="p", quality=0.5, alignment=0.5, model="g1", status="ok", media_type="image", q_std=0.5,
        a_std=0.5, **extra):
    return {"id": id, "uri": f"media/{id}.png", "media_type": media_type, "model": model, "prompt": prompt,
            "status": status, "error": None if status == "ok" else "broken", "quality": quality,
            "alignment": alignment, "quality_std": q_std, "alignment_std": a_std,
            "scorer_model": "scorer", "prompt_version": "qeval100k-v1", **extra}


def scores_dir(tmp_path, rows, name="out", summary=True) -> Path:
    out = tmp_path / name
    (out / "scores").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "scores" / "part-0.parquet")
    if summary:
        (out / "_summary.json").write_text(json.dumps({"provenance": {"scorer_model": "scorer"}}))
    return out


def curate(scores, output, *args, expect=0):
    try:
        code = curate_main(["--scores", str(scores), "--output", str(output), "--no-plots", *map(str, args)])
    except SystemExit as e:  # argparse's own refusals (a value its type function rejects)
        code = e.code
    assert code == expect
    if expect:
        return None
    return json.loads((Path(output) / "curation.json").read_text())


def table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --- the reward grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("0.6*quality + 0.4*alignment", lambda q, a: 0.6 * q + 0.4 * a),
    ("min(quality, alignment)", lambda q, a: min(q, a)),
    ("max(quality, alignment, 0.55)", lambda q, a: max(q, a, 0.55)),
    ("-quality - -alignment", lambda q, a: -q + a),
    ("(quality + alignment) / 2 - 0.1 * quality_std", lambda q, a: (q + a) / 2 - 0.1 * 0.25),
    ("2 * -(quality - 1e-1) + .5", lambda q, a: 2 * -(q - 0.1) + 0.5),
    ("quality - alignment * 2 / 4", lambda q, a: q - a * 2 / 4),
])
def test_reward_expressions_compute_what_they_say(text, expected):
    expr = parse(text, COLUMNS)
    con = duckdb.connect()
    values = [(0.2, 0.7), (0.9, 0.1), (0.5, 0.5)]
    got = con.execute(f"SELECT {expr.sql()} FROM (VALUES {', '.join(f'({q}, {a}, 0.25)' for q, a in values)}) "
                      "t(quality, alignment, quality_std)").fetchall()
    assert [g[0] for g in got] == pytest.approx([expected(q, a) for q, a in values], abs=1e-12)
    # The canonical text parses to the same tree.
    assert parse(expr.text(), COLUMNS).tree == expr.tree


@pytest.mark.parametrize("text, fragment", [
    ("__import__('os')", "'__import__' at position 1 cannot be called"),
    ("quality.real", "unexpected '.' at position 8: attribute access"),
    ("quality.__class__", "unexpected '.' at position 8"),
    ("abs(quality)", "'abs' at position 1 cannot be called: the only functions are min and max"),
    ("exec('1')", "'exec' at position 1 cannot be called"),
    ("0.5 * eval('quality')", "'eval' at position 7 cannot be called"),
    ("quality(1)", "'quality' at position 1 cannot be called"),
    ("quality**2", "position 9: powers are not part of the grammar"),
    ("quality[0]", "unexpected '[' at position 8"),
    ("'quality'", "unexpected \"'\" at position 1: strings"),
    ("0.6*qualty", "unknown column 'qualty' at position 5 (did you mean 'quality'?)"),
    ("quality +", "at position 10, found the end of the expression"),
    ("(quality", "expected a closing ')' at position 9"),
    ("quality alignment", "at position 9, found 'alignment'"),
    ("min(quality)", "needs at least two arguments"),
    ("prompt", "column 'prompt' at position 1 is not a number"),
    ("", "the expression is empty"),
    ("quality; import os", "unexpected ';' at position 8"),
    ("quality if 1 else 0", "at position 9, found 'if'"),
])
def test_unsafe_or_wrong_expressions_are_refused_with_a_position(text, fragment):
    with pytest.raises(ExpressionError) as error:
        parse(text, COLUMNS, ["prompt"])
    assert fragment in str(error.value)


def test_the_job_refuses_a_bad_reward_before_any_work(tmp_path, capsys):
    scores = scores_dir(tmp_path, [row("a")])
    curate(scores, tmp_path / "cur", "--reward", "0.6*qualty + __import__('os')", expect=2)
    err = capsys.readouterr().err.strip()
    assert err == ("qeval-ray curate: error: --reward: unknown column 'qualty' at position 5 "
                   "(did you mean 'quality'?)")
    assert not (tmp_path / "cur").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--min", "quality=abc"], "'quality=abc': write COLUMN=NUMBER or COLUMN=qLEVEL"),
    (["--min", "quality=q1.5"], "a quantile's level is in [0, 1]"),
    (["--min", "qualty=0.5"], "--min qualty=0.5: 'qualty' is not a column of the scores (did you mean 'quality'?)"),
    (["--max", "prompt=0.5"], "'prompt' is not a number"),
    (["--pairs", "best"], "--pairs 'best': choose one of all, best-vs-worst, adjacent, none"),
    (["--media-type", "audio"], "--media-type 'audio'"),
    (["--group-by", "prompt_id"], "--group-by: the scores have no column 'prompt_id'"),
    (["--top-k", "-1"], "--top-k must not be negative"),
    (["--memory-limit", "lots"], "--memory-limit 'lots'"),
])
def test_bad_rules_are_one_line_before_any_work(tmp_path, capsys, args, fragment):
    scores = scores_dir(tmp_path, [row("a")])
    curate(scores, tmp_path / "cur", *args, expect=2)
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "cur").exists()


# --- filters ---------------------------------------------------------------------------------------


def test_per_generator_quantile_bounds(tmp_path):
    rng = np.random.default_rng(4)
    rows, values = [], {}
    for g, (lo, hi, n) in {"g1": (0.0, 0.5, 9), "g2": (0.4, 1.0, 13), "g3": (0.2, 0.3, 1)}.items():
        values[g] = rng.uniform(lo, hi, n)
        rows += [row(f"{g}-{k}", prompt=f"{g}-{k}", quality=float(v), model=g) for k, v in enumerate(values[g])]
    scores = scores_dir(tmp_path, rows)
    report = curate(scores, tmp_path / "cur", "--reward", "quality", "--min", "quality=q0.25", "--max",
                    "quality=q0.9", "--pairs", "none")
    kept = {r["id"] for r in table(tmp_path / "cur" / "kept.parquet")}
    expected = set()
    for g, v in values.items():
        lo, hi = np.quantile(v, 0.25), np.quantile(v, 0.9)  # linear interpolation, as quantile_cont
        expected |= {f"{g}-{k}" for k, x in enumerate(v) if lo <= x <= hi}
    assert kept == expected
    assert "g3-0" in kept  # a generator with one row is its own quantile
    # A global quantile would keep other rows: the bounds really are per generator.
    everything = np.concatenate(list(values.values()))
    glo, ghi = np.quantile(everything, 0.25), np.quantile(everything, 0.9)
    assert kept != {f"{g}-{k}" for g, v in values.items() for k, x in enumerate(v) if glo <= x <= ghi}
    steps = report["counts"]["steps"]
    assert [s["rule"].split(" (")[0] for s in steps[-2:]] == ["--min quality=q0.25", "--max quality=q0.9"]
    assert steps[-1]["rows"] == len(expected) == report["counts"]["kept"]


def test_counts_after_each_rule(tmp_path):
    rows = [
        row("ok1", quality=0.8, alignment=0.5), row("ok2", quality=0.3, alignment=0.25),
        row("bad1", status="decode_error"), row("bad2", status="fetch_error"), row("bad3", status="decode_error"),
        row("vid", media_type="video"), row("g9", model="g9"),
        row("noalign", alignment=None), row("zero", alignment=0.0),  # quality / 0 is not a finite reward
        row("unsure", q_std=1.9), row("low", quality=0.05, alignment=0.5),
    ]
    scores = scores_dir(tmp_path, rows)
    report = curate(scores, tmp_path / "cur", "--reward", "quality / alignment", "--media-type", "image",
                    "--generators", "g1", "--max-std", "1.5", "--min", "quality=0.1", "--pairs", "none")
    steps = [(s["rule"].split(" ")[0], s["dropped"], s["rows"]) for s in report["counts"]["steps"]]
    assert steps == [("status", 3, 8), ("media", 1, 7), ("model", 1, 6), ("a", 1, 5), ("a", 1, 4),
                     ("spread", 1, 3), ("--min", 1, 2)]
    assert report["counts"]["steps"][0]["by_status"] == {"decode_error": 2, "fetch_error": 1}
    assert {r["id"] for r in table(tmp_path / "cur" / "kept.parquet")} == {"ok1", "ok2"}
    assert report["counts"]["rows_in"] == len(rows) and report["counts"]["kept"] == 2


# --- groups: top-k, advantages -------------------------------------------------------------------


def test_top_k_with_ties_keeps_the_smaller_id(tmp_path):
    rewards = {"e": 0.9, "d": 0.7, "b": 0.7, "c": 0.7, "a": 0.1, "x": 0.3, "y": 0.3}
    rows = [row(i, prompt="one" if i in "edbca" else "two", quality=q, alignment=q) for i, q in rewards.items()]
    report = curate(scores_dir(tmp_path, rows), tmp_path / "cur", "--top-k", "2", "--pairs", "none")
    kept = table(tmp_path / "cur" / "kept.parquet")
    assert [(r["prompt"], r["id"], r["rank"]) for r in kept] == [("one", "e", 1), ("one", "b", 2),
                                                                 ("two", "x", 1), ("two", "y", 2)]
    assert report["counts"]["top_k_ties_at_boundary"] == 1  # b beat c and d on id alone
    assert any("tie across the top-2 boundary" in w for w in report["warnings"])


def test_advantages_in_groups_of_one_and_of_no_spread(tmp_path):
    spread = [0.2, 0.5, 0.9, 0.6]
    rows = [row(f"s{k}", prompt="spread", quality=q, alignment=q) for k, q in enumerate(spread)]
    rows += [row(f"f{k}", prompt="flat", quality=0.4, alignment=0.4) for k in range(3)]
    rows += [row("alone", prompt="alone", quality=0.7, alignment=0.7)]
    scores = scores_dir(tmp_path, rows)
    for kind, ddof in (("population", 0), ("sample", 1)):
        out = tmp_path / kind
        report = curate(scores, out, "--advantage-std", kind, "--pairs", "none")
        got = {r["id"]: r for r in table(out / "kept.parquet")}
        r = np.array(spread)
        expected = (r - r.mean()) / r.std(ddof=ddof)
        assert [got[f"s{k}"]["advantage"] for k in range(4)] == pytest.approx(expected, abs=1e-12)
        assert got["s0"]["group_std"] == pytest.approx(r.std(ddof=ddof), abs=1e-12)
        assert all(got[f"f{k}"]["advantage"] == 0.0 for k in range(3))
        assert got["alone"]["advantage"] == 0.0 and got["alone"]["group_size"] == 1
        a = report["advantages"]
        assert (a["groups_zero_spread"], a["groups_of_one"], a["rows_zero"]) == (1, 1, 4)
        assert report["groups"]["sizes"] == {"1": 1, "3": 1, "4": 1}


# --- pairs -----------------------------------------------------------------------------------------


def _group(tmp_path, stds=(0.5, 0.5, 0.5, 0.5)):
    # Rewards with exact binary margins: 0.25, 0.375, 0.75, 0.125, 0.5, 0.375.
    rewards = [0.875, 0.625, 0.5, 0.125]
    rows = [row(f"r{k}", prompt="p", quality=q, alignment=q, q_std=s, model=f"g{k}")
            for k, (q, s) in enumerate(zip(rewards, stds))]
    rows += [row("t1", prompt="tied", quality=0.5), row("t2", prompt="tied", quality=0.5)]  # equal: no pair
    return scores_dir(tmp_path, rows, name="scores-" + "-".join(map(str, stds)))


def pairs_of(out) -> list[tuple]:
    return [(p["chosen_id"], p["rejected_id"], p["margin"]) for p in table(Path(out) / "pairs.parquet")]


def test_pairs_in_each_mode(tmp_path):
    scores = _group(tmp_path)
    curate(scores, tmp_path / "all", "--pairs", "all")
    assert pairs_of(tmp_path / "all") == [("r0", "r1", 0.25), ("r0", "r2", 0.375), ("r0", "r3", 0.75),
                                          ("r1", "r2", 0.125), ("r1", "r3", 0.5), ("r2", "r3", 0.375)]
    report = curate(scores, tmp_path / "bvw", "--pairs", "best-vs-worst")
    assert pairs_of(tmp_path / "bvw") == [("r0", "r3", 0.75)]
    assert report["pairs"]["left_out"]["equal_rewards"] == 1  # the tied group's only pair
    assert report["pairs"]["per_group"] == {"0": 1, "1": 1}
    curate(scores, tmp_path / "adj", "--pairs", "adjacent")
    assert pairs_of(tmp_path / "adj") == [("r0", "r1", 0.25), ("r1", "r2", 0.125), ("r2", "r3", 0.375)]
    first = table(tmp_path / "adj" / "pairs.parquet")[0]
    assert first == {"prompt": "p", "chosen": "media/r0.png", "rejected": "media/r1.png", "chosen_reward": 0.875,
                     "rejected_reward": 0.625, "margin": 0.25, "chosen_id": "r0", "rejected_id": "r1",
                     "chosen_rank": 1, "rejected_rank": 2, "chosen_model": "g0", "rejected_model": "g1"}


def test_pairs_margin_and_cap(tmp_path):
    scores = _group(tmp_path)
    report = curate(scores, tmp_path / "margin", "--min-margin", "0.25")
    assert sorted(pairs_of(tmp_path / "margin")) == [("r0", "r1", 0.25), ("r0", "r2", 0.375), ("r0", "r3", 0.75),
                                                     ("r1", "r3", 0.5), ("r2", "r3", 0.375)]
    assert report["pairs"]["left_out"]["min_margin"] == 1
    # The cap keeps the largest margins; equal margins (0.375 twice) go by the chosen's rank.
    report = curate(scores, tmp_path / "cap", "--max-pairs-per-group", "3")
    assert sorted(pairs_of(tmp_path / "cap")) == [("r0", "r2", 0.375), ("r0", "r3", 0.75), ("r1", "r3", 0.5)]
    assert report["pairs"]["left_out"]["cap"] == 3
    assert report["pairs"]["written"] == 3 and report["pairs"]["candidates"] == 7


def test_pairs_with_an_uncertain_member_are_left_out(tmp_path):
    scores = _group(tmp_path, stds=(0.5, 1.7, 0.5, 0.5))
    report = curate(scores, tmp_path / "cur", "--pair-max-std", "1.0")
    assert pairs_of(tmp_path / "cur") == [("r0", "r2", 0.375), ("r0", "r3", 0.75), ("r2", "r3", 0.375)]
    assert report["pairs"]["left_out"]["uncertain_member"] == 3
    # The uncertain row is still kept (with its advantage): only its pairs go.
    assert "r1" in {r["id"] for r in table(tmp_path / "cur" / "kept.parquet")}
    # --max-std drops it altogether, so the other three pair among themselves.
    curate(scores, tmp_path / "drop", "--max-std", "1.0")
    assert "r1" not in {r["id"] for r in table(tmp_path / "drop" / "kept.parquet")}


def test_spread_of_the_aspects_the_reward_reads(tmp_path):
    rows = [row("a", prompt="p", quality=0.9, alignment=0.1, q_std=0.2, a_std=1.9),
            row("b", prompt="p", quality=0.2, alignment=0.8, q_std=0.3, a_std=0.1)]
    scores = scores_dir(tmp_path, rows)
    curate(scores, tmp_path / "q", "--reward", "quality", "--pair-max-std", "1")
    assert pairs_of(tmp_path / "q") == [("a", "b", pytest.approx(0.7))]  # alignment's spread is not read
    curate(scores, tmp_path / "qa", "--reward", "quality + alignment", "--pair-max-std", "1")
    assert pairs_of(tmp_path / "qa") == []


# --- outputs ---------------------------------------------------------------------------------------


def _corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p = rng.dirichlet(np.ones(5) * 0.7, size=2)
        w = np.array([1, 0.75, 0.5, 0.25, 0])
        extra = {f"{a}_p_{t}": float(p[k][j]) for k, a in enumerate(("quality", "alignment"))
                 for j, t in enumerate(("excellent", "good", "fair", "poor", "bad"))}
        rows.append({**row(f"id{i:04d}", prompt=f"prompt {i // 4}", quality=float(p[0] @ w),
                           alignment=float(p[1] @ w), model=f"g{i % 5}", status="ok" if i % 17 else "score_error",
                           media_type="video" if i % 7 == 0 else "image"), **extra})
    for r in rows:  # spreads from the probabilities, as the scorer writes them
        for a in ("quality", "alignment"):
            probs = np.array([r[f"{a}_p_{t}"] for t in ("excellent", "good", "fair", "poor", "bad")])
            levels = np.array([5, 4, 3, 2, 1.0])
            r[f"{a}_std"] = float(np.sqrt((probs * (levels - probs @ levels) ** 2).sum()))
    return rows


def test_two_runs_give_byte_identical_files(tmp_path):
    rows = _corpus()
    scores = scores_dir(tmp_path, rows)
    # The same rows in another order and split across files make the same curation.
    shuffled = tmp_path / "shuffled" / "scores"
    shuffled.mkdir(parents=True)
    order = np.random.default_rng(1).permutation(len(rows))
    for k, part in enumerate(np.array_split(order, 3)):
        pq.write_table(pa.Table.from_pylist([rows[i] for i in part]), shuffled / f"part-{k}.parquet")
    (shuffled.parent / "_summary.json").write_bytes((scores / "_summary.json").read_bytes())
    args = ["--reward", "0.7*quality + 0.3*alignment", "--min", "alignment=q0.1", "--top-k", "3",
            "--max-pairs-per-group", "4", "--pair-max-std", "1.4"]
    runs = [("a", scores, "1"), ("b", scores, "2"), ("c", tmp_path / "shuffled", "2")]
    for name, source, threads in runs:
        assert curate_main(["--scores", str(source), "--output", str(tmp_path / name), "--threads", threads,
                            *args]) == 0

    def files(name):
        root = tmp_path / name
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files("a"), files("b"), files("c")
    assert sorted(a) == ["curation.json", "histograms/alignment.png", "histograms/quality.png",
                         "histograms/reward.png", "kept.parquet", "pairs.jsonl", "pairs.parquet"]
    assert a == b  # one thread or two
    # Another file layout changes only the input's description in curation.json.
    assert {k: v for k, v in a.items() if k != "curation.json"} == {k: v for k, v in c.items() if k != "curation.json"}
    ja, jc = json.loads(a["curation.json"]), json.loads(c["curation.json"])
    assert {k: v for k, v in ja.items() if k != "input"} == {k: v for k, v in jc.items() if k != "input"}
    # A rerun into the same output replaces the curation.
    assert curate_main(["--scores", str(scores), "--output", str(tmp_path / "a"), "--threads", "1", *args]) == 0
    assert files("a") == a


def test_pairs_and_kept_rows_load_with_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    scores = scores_dir(tmp_path, _corpus(120))
    report = curate(scores, tmp_path / "cur", "--pairs", "best-vs-worst")
    pairs = datasets.load_dataset("parquet", data_files=str(tmp_path / "cur" / "pairs.parquet"), split="train",
                                  cache_dir=str(tmp_path / "cache"))
    assert pairs.column_names[:6] == ["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "margin"]
    assert len(pairs) == report["pairs"]["written"] > 0
    assert all(m > 0 for m in pairs["margin"])
    as_json = datasets.load_dataset("json", data_files=str(tmp_path / "cur" / "pairs.jsonl"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert as_json.to_list() == pairs.to_list()
    kept = datasets.load_dataset("parquet", data_files=str(tmp_path / "cur" / "kept.parquet"), split="train",
                                 cache_dir=str(tmp_path / "cache"))
    assert len(kept) == report["counts"]["kept"] and "advantage" in kept.column_names
    import pandas
    import polars

    for name in ("pairs.parquet", "kept.parquet"):
        path = tmp_path / "cur" / name
        frames = (pandas.read_parquet(path), polars.read_parquet(path).to_pandas(),
                  duckdb.sql(f"SELECT * FROM '{path}'").df())
        assert all(len(f) == len(frames[0]) > 0 and list(f.columns) == list(frames[0].columns) for f in frames)


def test_the_benchmark_runs(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/curate.py", "--rows", "3000", "--json", str(tmp_path / "b.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["rows"] == 3000 and result["groups"] > 0 and result["pairs"] > 0
    assert result["curate_seconds"] > 0 and result["curate_peak_rss_mb"] > 0


def test_report_records_rules_counts_and_provenance(tmp_path):
    scores = scores_dir(tmp_path, _corpus(80))
    report = curate(scores, tmp_path / "cur", "--reward", "min(quality,alignment)", "--top-k", "2")
    assert report["rules"]["reward"] == "min(quality,alignment)"
    assert report["rules"]["reward_parsed"] == "min(quality, alignment)"
    assert report["rules"]["rank_order"] == "reward descending, then id ascending"
    assert report["provenance"]["rows"] == [{"scorer_model": "scorer", "prompt_version": "qeval100k-v1",
                                             "rows": report["counts"]["kept"]}]
    assert report["provenance"]["score_run"] == {"scorer_model": "scorer"}
    assert report["input"]["files"] == [{"name": "part-0.parquet", "rows": 80,
                                         "bytes": (scores / "scores" / "part-0.parquet").stat().st_size}]
    h = report["histograms"]["quality"]
    assert len(h["edges"]) == 21 and sum(h["after"]) == report["counts"]["kept"]
    assert sum(h["before"]) == report["counts"]["steps"][0]["rows"]  # the ok rows


def test_older_scores_without_spread_columns(tmp_path):
    rows = _corpus(40)
    old = [{k: v for k, v in r.items() if not k.endswith("_std")} for r in rows]
    a = curate(scores_dir(tmp_path, rows, "new"), tmp_path / "a", "--pair-max-std", "1.2")
    b = curate(scores_dir(tmp_path, old, "old"), tmp_path / "b", "--pair-max-std", "1.2")
    assert b["columns"]["derived"] == ["alignment_std", "quality_std"]
    assert pairs_of(tmp_path / "a") == pairs_of(tmp_path / "b")
    new_kept = {r["id"]: r for r in table(tmp_path / "a" / "kept.parquet")}
    for r in table(tmp_path / "b" / "kept.parquet"):
        assert r["quality_std"] == pytest.approx(new_kept[r["id"]]["quality_std"], abs=1e-12)


def test_outputs_and_inputs_it_refuses(tmp_path, capsys):
    scores = scores_dir(tmp_path, [row("a")])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    curate(scores, busy, expect=2)
    assert "holds files that are not a curation" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "mine"
    unfinished = scores_dir(tmp_path, [row("a")], name="unfinished", summary=False)
    curate(unfinished, tmp_path / "cur", expect=2)
    assert "did not finish" in capsys.readouterr().err
    curate(unfinished, tmp_path / "cur", "--allow-incomplete")
    duplicated = scores_dir(tmp_path, [row("a"), row("a")], name="dup")
    curate(duplicated, tmp_path / "dup-cur", expect=2)
    assert "ids more than once (e.g. 'a')" in capsys.readouterr().err


def test_the_job_script_runs(tmp_path):
    scores = scores_dir(tmp_path, _corpus(30))
    proc = subprocess.run([sys.executable, "jobs/curate.py", "--scores", str(scores), "--output",
                           str(tmp_path / "cur"), "--top-k", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "score rows in" in proc.stdout and (tmp_path / "cur" / "histograms" / "reward.png").stat().st_size > 0


@pytest.mark.slow  # starts an S3 server (no Ray, no engine; a few seconds)
def test_scores_on_object_storage_curate_as_local_ones(tmp_path):
    import os

    from s3server import S3Server

    rows = _corpus(200, seed=3)
    local_scores = scores_dir(tmp_path, rows)
    args = ["--top-k", "2", "--min", "quality=q0.1", "--pairs", "adjacent"]
    assert curate_main(["--scores", str(local_scores), "--output", str(tmp_path / "local"), *args]) == 0
    server = S3Server()
    try:
        client = server.client()
        client.create_bucket(Bucket="scores")
        for path in local_scores.rglob("*"):
            if path.is_file():
                client.put_object(Bucket="scores", Key=f"run/{path.relative_to(local_scores)}", Body=path.read_bytes())
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
        env.pop("AWS_ENDPOINT_URL", None)
        proc = subprocess.run([sys.executable, "jobs/curate.py", "--scores", "s3://scores/run", "--output",
                               "s3://scores/curated", "--s3-endpoint", server.endpoint, *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        listed = client.list_objects_v2(Bucket="scores", Prefix="curated/")["Contents"]
        remote = {o["Key"].removeprefix("curated/"): client.get_object(Bucket="scores", Key=o["Key"])["Body"].read()
                  for o in listed}
    finally:
        server.stop()
    local = {str(p.relative_to(tmp_path / "local")): p.read_bytes() for p in (tmp_path / "local").rglob("*")
             if p.is_file()}
    assert sorted(remote) == sorted(local)
    assert {k: v for k, v in remote.items() if k != "curation.json"} == \
        {k: v for k, v in local.items() if k != "curation.json"}
    report = json.loads(remote["curation.json"])
    assert report["input"]["scores"] == "s3://scores/run"
    assert report["provenance"]["score_run"] == {"scorer_model": "scorer"}
    assert report["counts"] == json.loads(local["curation.json"])["counts"]
