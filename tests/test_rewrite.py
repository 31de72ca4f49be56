"""The V2S rewrite job: an LLM (real vLLM through Ray Data's LLM processor, the tiny model) writes the
parts of long prompts; every row is kept; the output is a manifest the score job scores with --v2s."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import REPO, SMALL, read_scores
from qeval_ray.testing import synthetic
from qeval_ray.config import ConfigError, RewriteConfig
from qeval_ray.rewrite import V2S_REWRITE_VERSION, answer_schema, needs_parts, read_answer

LONG = ("a crowded night market under paper lanterns, steam rising from a noodle stall, a child holding a red "
        "balloon, neon signs reflected in puddles and a tram passing at the far end of the street")


def test_answers_are_read_and_checked_as_the_score_job_checks_parts():
    good = json.dumps({"vague": "a night market", "specific": ["paper lanterns", "a red balloon"]})
    assert read_answer(good, LONG) == ("a night market", ["paper lanterns", "a red balloon"], None)
    cut = good[:30]
    assert read_answer(cut, LONG, cut_off=True)[2] == "the answer is not complete JSON: it was cut off at --max-tokens"
    assert read_answer(cut, LONG)[2].startswith("the answer is not complete JSON: Unterminated string")
    assert read_answer('{"vague": "a\tb", "specific": ["c"]}', LONG)[0] == "a\tb"  # raw control characters
    for bad, why in ((json.dumps({"vague": "x"}), "KeyError"), (json.dumps({"vague": 1, "specific": []}), "TypeError"),
                     (json.dumps({"vague": "x", "specific": ["<|image_pad|>"]}), "vision token"),
                     (json.dumps({"vague": "x", "specific": []}), "v2s_specific is empty")):
        vague, specific, error = read_answer(bad, LONG)
        assert vague is None and specific is None and why in error, error


def test_which_rows_are_rewritten_and_the_answer_schema():
    config = RewriteConfig("in", "out", max_specific=4, max_part_chars=50)
    assert needs_parts({"prompt": LONG}, config)
    assert not needs_parts({"prompt": "a short prompt"}, config)
    assert not needs_parts({"prompt": None}, config)
    kept = {"prompt": LONG, "v2s_vague": "v", "v2s_specific": ["s"]}
    assert not needs_parts(kept, config) and needs_parts(kept, RewriteConfig("in", "out", redo=True))
    schema = answer_schema(config)
    assert schema["properties"]["specific"]["maxItems"] == 4
    assert schema["properties"]["vague"]["maxLength"] == 50 and schema["required"] == ["vague", "specific"]
    with pytest.raises(ConfigError, match="--max-specific must not exceed 16"):
        RewriteConfig("in", "out", max_specific=17).validate()
    with pytest.raises(ConfigError, match="--output must differ from --input"):
        RewriteConfig("a/", "a").validate()


@pytest.mark.slow
def test_the_rewrite_job_writes_parts_the_score_job_scores(tmp_path, tiny_model, ray_local):
    media = tmp_path / "media"
    media.mkdir()
    synthetic.save_image(media / "a.png", synthetic.pattern(120, 160, 5))
    rows = [
        {"id": "long-1", "uri": "media/a.png", "prompt": LONG, "model": "gen-0", "quality_mos": 3.5},
        {"id": "long-2", "uri": "media/a.png", "prompt": LONG.replace("red", "blue"), "model": "gen-1",
         "quality_mos": 2.0},
        {"id": "short", "uri": "media/a.png", "prompt": "a night market", "model": "gen-0", "quality_mos": 4.0},
        {"id": "has-parts", "uri": "media/a.png", "prompt": LONG, "model": "gen-1", "quality_mos": 1.5,
         "v2s_vague": "a market", "v2s_specific": ["lanterns", "a tram"]},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts_dir = tmp_path / "parts"
    job = [sys.executable, "jobs/v2s_parts.py", "--input", str(manifest), "--output", str(parts_dir),
           "--model", tiny_model, "--enforce-eager", "--max-model-len", "1024", "--max-specific", "3",
           "--max-part-chars", "40", "--max-tokens", "400", "--batch-size", "4"]
    proc = subprocess.run(job, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    out = {r["id"]: r for r in pq.read_table(parts_dir).to_pylist()}
    assert sorted(out) == sorted(r["id"] for r in rows)  # rows in = rows out
    assert out["long-2"]["model"] == "gen-1" and out["long-2"]["quality_mos"] == 2.0  # other columns kept
    assert out["short"]["v2s_vague"] is None and out["short"]["v2s_rewriter"] is None
    assert (out["has-parts"]["v2s_vague"], out["has-parts"]["v2s_specific"]) == ("a market", ["lanterns", "a tram"])
    assert out["has-parts"]["v2s_rewriter"] is None  # not asked again without --redo
    written = 0
    for item in ("long-1", "long-2"):
        row = out[item]
        assert row["v2s_rewriter"] == f"{tiny_model} ({V2S_REWRITE_VERSION})"
        if row["v2s_rewrite_error"] is None:  # random weights: the schema still holds the answer's shape
            assert row["v2s_vague"] and 1 <= len(row["v2s_specific"]) <= 3
            assert all(0 < len(t) <= 40 for t in [row["v2s_vague"], *row["v2s_specific"]])
            written += 1
        else:
            assert row["v2s_vague"] is None and row["v2s_specific"] is None
    assert written >= 1, out
    assert f"{written} long prompts split into parts" in proc.stdout

    again = subprocess.run(job, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "is not empty" in again.stderr  # never mixes with earlier output

    assert out["short"]["uri"] == str(media / "a.png")  # relative to the input manifest, written resolved

    # The parts go straight into the score job.
    from qeval_ray.config import parse_score_args
    from qeval_ray.pipeline import run_score_job as run

    summary = run(parse_score_args(["--input", str(parts_dir), "--output", str(tmp_path / "scores"), "--model",
                                    tiny_model, "--engine", "hf", "--num-cpus-per-actor", "0.5", *SMALL, "--v2s"]))
    scored = {r["id"]: r for r in read_scores(tmp_path / "scores").to_pylist()}
    assert summary.alignment_in_parts == written + 1  # has-parts too
    assert scored["has-parts"]["alignment_method"] == "v2s" and scored["short"]["alignment_method"] == "direct"


def test_bad_rewrite_options_stop_before_work(tmp_path):
    out = tmp_path / "parts"
    proc = subprocess.run([sys.executable, "jobs/v2s_parts.py", "--input", str(tmp_path / "m.parquet"), "--output",
                           str(out), "--max-specific", "20", "--concurrency", "0"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--max-specific must not exceed 16" in proc.stderr and "--concurrency must be at least 1" in proc.stderr
    assert not out.exists()
    missing = subprocess.run([sys.executable, "jobs/v2s_parts.py", "--input", str(tmp_path / "none.parquet"),
                              "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "manifest not found" in missing.stderr, missing.stderr
