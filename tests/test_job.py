"""The whole job over a mixed image + video corpus, run as users run it, with both engines."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import MAX_MODEL_LEN, MIXED_BAD, REPO, SMALL, assert_probabilities, read_scores

pytestmark = pytest.mark.slow


def job_args(manifest, out, model, engine, *extra):
    return ["--input", str(manifest), "--output", str(out), "--model", model, "--engine", engine,
            "--batch-size", "4", "--decode-batch-size", "2", *SMALL, *extra]


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory, tiny_model, mixed_corpus):
    """`python jobs/score.py ...` in a subprocess: its own local Ray, two vLLM actors."""
    out = tmp_path_factory.mktemp("out_vllm")
    args = job_args(mixed_corpus, out, tiny_model, "vllm", "--enforce-eager", "--concurrency", "2",
                    "--num-cpus-per-actor", "0.5", "--max-model-len", str(MAX_MODEL_LEN), "--v2s")
    proc = subprocess.run([sys.executable, "jobs/score.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_model, mixed_corpus, ray_local):
    """The same corpus through the HF engine, in-process (the driver API)."""
    from qeval_ray.config import parse_score_args
    from qeval_ray.pipeline import run_score_job as run

    out = tmp_path_factory.mktemp("out_hf")
    config = parse_score_args(job_args(mixed_corpus, out, tiny_model, "hf", "--num-cpus-per-actor", "0.5", "--v2s"))
    return out, run(config)


def test_rows_in_equal_rows_out(vllm_run, mixed_corpus):
    import pyarrow.parquet as pq

    ids = pq.read_table(mixed_corpus).column("id").to_pylist()
    out = read_scores(vllm_run[0]).column("id").to_pylist()
    assert sorted(out) == sorted(ids) and len(set(out)) == len(out)


def test_every_bad_row_has_a_status_and_a_reason(vllm_run):
    rows = {r["id"]: r for r in read_scores(vllm_run[0]).to_pylist()}
    for item, status in MIXED_BAD.items():
        assert rows[item]["status"] == status, (item, rows[item]["error"])
        assert rows[item]["error"], item
        assert rows[item]["quality"] is None and rows[item]["alignment"] is None
    assert "decompression bomb" in rows["bomb"]["error"]
    assert "not found" in rows["missing"]["error"]
    assert "aspect ratio" in rows["thin"]["error"]
    assert "prompt is empty" in rows["empty-prompt"]["error"]
    assert "no video stream" in rows["clip-audio-only"]["error"]
    assert "empty file" in rows["clip-empty"]["error"]
    assert "<|image_pad|>" in rows["vision-token"]["error"]
    # A real engine failure on one item: isolated, the rest of its batch scored.
    assert rows["too-long"]["status"] == "score_error"
    assert str(MAX_MODEL_LEN) in rows["too-long"]["error"]


def test_every_good_row_has_scores(vllm_run):
    table = read_scores(vllm_run[0])
    ok = table.filter(table.column("status").to_numpy(zero_copy_only=False) == "ok")
    assert ok.num_rows == table.num_rows - len(MIXED_BAD) - 1
    for aspect in ("quality", "alignment"):
        assert ok.column(aspect).null_count == 0
        assert_probabilities(ok, aspect)
    assert len(set(np.round(ok.column("quality").to_pylist(), 9))) > 3  # not one constant
    row = next(r for r in ok.to_pylist() if r["id"] == "quotes")
    assert row["prompt"].startswith('a "quoted" sign') and "東京" in row["prompt"]
    assert set(ok.column("engine").to_pylist()) == {"vllm"}
    assert set(ok.column("dtype").to_pylist()) == {"float32"}
    assert all(v.startswith("local-sha256:") for v in ok.column("scorer_revision").to_pylist())
    assert set(ok.column("prompt_version").to_pylist()) == {"qeval100k-v1"}
    assert (np.array(ok.column("media_height").to_pylist()) % 28 == 0).all()


def test_videos_are_scored_with_their_sampling(vllm_run):
    rows = {r["id"]: r for r in read_scores(vllm_run[0]).to_pylist()}
    for item, (frames, fps) in {"clip-0": (36, 24), "clip-1": (50, 25), "clip-2": (45, 30)}.items():
        row = rows[item]
        assert row["status"] == "ok" and row["media_type"] == "video", row["error"]
        assert row["source_frames"] == frames and row["source_fps"] == pytest.approx(fps)
        assert row["num_frames"] % 2 == 0 and row["num_frames"] >= 4
        assert row["sample_fps"] == pytest.approx(len_sampled(frames, fps) / frames * fps)
        assert row["media_height"] * row["media_width"] <= 16 * 28 * 28  # --video-max-pixels
        assert 0 <= row["quality"] <= 1 and 0 <= row["alignment"] <= 1
    one = rows["one-frame"]  # padded to the temporal patch, as qwen-vl-utils pads frame lists
    assert one["status"] == "ok" and one["num_frames"] == 2 and one["source_frames"] == 1


def len_sampled(frames, fps):
    from qwen_vl_utils.vision_process import smart_nframes

    return smart_nframes({"fps": 8}, total_frames=frames, video_fps=fps)


def test_summary(vllm_run):
    out, proc = vllm_run
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == read_scores(out).num_rows
    assert summary["by_status"]["decode_error"] == sum(s == "decode_error" for s in MIXED_BAD.values())
    assert summary["provenance"]["engine"] == "vllm"
    assert f"{summary['rows_in']} rows in, {summary['rows_out']} rows out" in proc.stdout
    assert "scores:" in proc.stdout


def test_the_job_writes_a_report_when_the_manifest_has_labels(vllm_run):
    out, proc = vllm_run
    report = json.loads((out / "_report" / "report.json").read_text())
    scores = read_scores(out)
    ok = [r for r in scores.to_pylist() if r["status"] == "ok"]
    assert report["rows"]["total"] == scores.num_rows
    assert report["excluded"]["alignment"]["used"] == len(ok)
    assert report["excluded"]["quality"]["used"] == sum(r["quality_mos"] is not None for r in ok)
    assert report["source"]["provenance"]["engine"] == "vllm"
    assert (out / "_report" / "report.md").read_text().startswith("# qeval-ray correlation report")
    assert f"report:  {out}/_report/report.md" in proc.stdout


def test_vllm_and_hf_agree_through_the_whole_job(vllm_run, hf_run):
    v = {r["id"]: r for r in read_scores(vllm_run[0]).to_pylist()}
    h = {r["id"]: r for r in read_scores(hf_run[0]).to_pylist()}
    assert v.keys() == h.keys()
    compared = 0
    for item in v:
        if item == "too-long":  # only vLLM has a context limit here
            assert h[item]["status"] == "ok"
            continue
        assert v[item]["status"] == h[item]["status"], item
        if v[item]["status"] == "ok":
            for aspect in ("quality", "alignment"):
                assert abs(v[item][aspect] - h[item][aspect]) < 1e-4, (item, aspect)
            compared += 1
    assert compared >= 14  # images and videos


def test_long_prompts_are_scored_in_parts_by_both_engines(vllm_run, hf_run):
    for out, _ in (vllm_run, hf_run):
        rows = {r["id"]: r for r in read_scores(out).to_pylist()}
        for item in ("long-v2s", "clip-v2s"):
            row = rows[item]
            assert row["status"] == "ok" and row["alignment_method"] == "v2s", row
            assert len(row["alignment_specific"]) == len(row["v2s_specific"]) == 2
            assert row["alignment"] == pytest.approx(
                0.5 * row["alignment_vague"] + 0.5 * np.mean(row["alignment_specific"]), abs=1e-12)
        assert rows["good-0"]["alignment_method"] == "direct"
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["alignment_in_parts"] == 2


def test_a_rerun_is_complete_refused_or_started_over(hf_run, tiny_model, mixed_corpus):
    from qeval_ray.config import parse_score_args
    from qeval_ray.contracts.layout import RunMismatch
    from qeval_ray.pipeline import run_score_job as run

    out, first = hf_run
    before = read_scores(out)
    same = run(parse_score_args(job_args(mixed_corpus, out, tiny_model, "hf", "--num-cpus-per-actor", "0.5", "--v2s")))
    assert same.note.startswith("already complete") and read_scores(out).num_rows == before.num_rows
    other = job_args(mixed_corpus, out, tiny_model, "hf", "--num-cpus-per-actor", "0.5", "--aspects", "quality")
    with pytest.raises(RunMismatch, match=r"aspects: \['quality', 'alignment'\] -> \['quality'\].*--start-over"):
        run(parse_score_args(other))
    second = run(parse_score_args(other + ["--start-over"]))
    after = read_scores(out)
    assert after.num_rows == before.num_rows == second.rows_out
    assert after.column("alignment").null_count == after.num_rows  # the new run's rows, not appended
    assert np.allclose(
        [x for x in after.column("quality").to_pylist() if x is not None],
        [x for x in before.column("quality").to_pylist() if x is not None],
    )


def test_the_scores_curate_into_training_data(vllm_run, tmp_path):
    """The score job's own output, curated: every row accounted for, provenance carried over."""
    from qeval_ray.cli import curate_main

    out = tmp_path / "curated"
    assert curate_main(["--scores", str(vllm_run[0]), "--output", str(out), "--group-by", "model",
                        "--pairs", "best-vs-worst", "--no-plots"]) == 0
    report = json.loads((out / "curation.json").read_text())
    table = read_scores(vllm_run[0])
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    assert report["counts"]["rows_in"] == table.num_rows
    assert report["counts"]["steps"][0]["rows"] == len(ok) == report["counts"]["kept"]
    assert report["groups"]["groups"] == len({r["model"] for r in ok})
    assert {p["engine"] for p in report["provenance"]["rows"]} == {"vllm"}
    assert report["provenance"]["score_run"]["engine"] == "vllm"
    import pyarrow.parquet as pq

    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert len(pairs) == report["groups"]["groups"] and all(p["margin"] > 0 for p in pairs)
