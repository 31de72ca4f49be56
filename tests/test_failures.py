"""Surviving failures, with real Ray processes: a killed driver, killed actors, a lost node, a
poisonous item, and a real `ray job submit` against a local head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

ITEMS = 240


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from qeval_ray.testing import synthetic

    return synthetic.make_corpus(tmp_path_factory.mktemp("fail_corpus"), images=ITEMS, videos=0,
                                 with_errors=False, max_side=96)


def job(manifest, out, model, *extra):
    return [sys.executable, "jobs/score.py", "--input", str(manifest), "--output", str(out), "--model", model,
            "--engine", "hf", "--num-cpus-per-actor", "0.5", "--batch-size", "8", "--rows-per-file", "16",
            "--max-pixels", str(16 * 28 * 28), "--no-report", *extra]


def env(**extra):
    ray_tmp = tempfile.mkdtemp(prefix="qr", dir="/tmp")  # short: Ray's socket paths have a length limit
    return dict(os.environ, RAY_TMPDIR=ray_tmp, **extra)


def committed(out: Path) -> dict[str, int]:
    scores = out / "scores"
    if not scores.exists():
        return {}
    return {p.name: pq.ParquetFile(p).metadata.num_rows for p in scores.glob("*.parquet")}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ids_of(out: Path) -> list[str]:
    return pq.read_table(out / "scores", columns=["id"]).column("id").to_pylist()


def test_a_killed_driver_resumes_exactly_once(corpus, tiny_model, tmp_path):
    out = tmp_path / "out"
    # A slow batch (0.25 s) keeps the run going long enough to kill it partway.
    first = subprocess.Popen(job(corpus, out, tiny_model), cwd=REPO, env=env(QEVAL_CHAOS="delay_s=0.25"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(committed(out)) >= 3, 300, "the first score files")
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, as a lost node would
    first.wait()
    survived = committed(out)
    assert not (out / "_summary.json").exists()
    assert 0 < sum(survived.values()) < ITEMS

    second = subprocess.run(job(corpus, out, tiny_model), cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    ids = ids_of(out)
    assert sorted(ids) == sorted(pq.read_table(corpus, columns=["id"]).column("id").to_pylist())
    assert len(set(ids)) == len(ids) == ITEMS
    summary = json.loads((out / "_summary.json").read_text())
    kept = {name: rows for name, rows in committed(out).items() if name in survived}
    # The second run scored exactly the rows the first had not committed; nothing twice.
    assert summary["rows_this_run"] == ITEMS - sum(kept.values())
    assert summary["rows_this_run"] < ITEMS
    assert f"({summary['rows_this_run']} scored by this run)" in second.stdout
    # And a third run has nothing to do.
    third = subprocess.run(job(corpus, out, tiny_model), cwd=REPO, env=env(), capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0 and "already complete" in third.stdout


def _actor_pids() -> list[int]:
    proc = subprocess.run(["pgrep", "-f", r"MapWorker\(MapBatches\(ScoreStage\)\)"], capture_output=True, text=True)
    return [int(p) for p in proc.stdout.split()]


def test_a_killed_scoring_actor_is_replaced(corpus, tiny_model, tmp_path):
    """One scoring actor, killed mid-batch: the run can only finish if Ray replaces it."""
    out = tmp_path / "out"
    marker = tmp_path / "hung-actor.pid"  # the actor writes its pid here, then stops inside a batch
    log = (tmp_path / "job.log").open("w")  # a file, not a pipe: nothing blocks while nobody reads
    run = subprocess.Popen(job(corpus, out, tiny_model, "--concurrency", "1"), cwd=REPO,
                           env=env(QEVAL_CHAOS=f"hang_once={marker};hang_after=4"), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(marker.exists, 300, "the scoring actor to stop mid-batch")
    victim = int(marker.read_text())
    assert victim in wait_for(_actor_pids, 30, "the scoring actor")  # it is the real Ray actor process
    os.kill(victim, signal.SIGKILL)
    run.wait(timeout=600)
    log.close()
    output = (tmp_path / "job.log").read_text()
    assert run.returncode == 0, output[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["scoring_actor_crashes"] >= 1 and "batches retried after their scoring actor died" in output
    table = pq.read_table(out / "scores", columns=["id", "status"])
    assert table.num_rows == ITEMS and len(set(table.column("id").to_pylist())) == ITEMS
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_an_item_that_crashes_the_engine_ends_as_one_error_row(tmp_path, tiny_model):
    from qeval_ray.testing import synthetic

    manifest = synthetic.make_corpus(tmp_path / "c", images=40, videos=0, with_errors=False, max_side=96)
    table = pq.read_table(manifest)
    prompts = table.column("prompt").to_pylist()
    prompts[17] = "POISON " + prompts[17]  # this item kills whatever actor scores it
    table = table.set_column(table.column_names.index("prompt"), "prompt", __import__("pyarrow").array(prompts))
    pq.write_table(table, manifest)
    out = tmp_path / "out"
    proc = subprocess.run(job(manifest, out, tiny_model, "--max-crashes", "2"), cwd=REPO,
                          env=env(QEVAL_CHAOS="crash_on_prompt=POISON"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["id"]: r for r in pq.read_table(out / "scores").to_pylist()}
    poisoned = table.column("id")[17].as_py()
    assert len(rows) == 40
    assert rows[poisoned]["status"] == "score_error"
    assert "crashed the scoring engine 2 times" in rows[poisoned]["error"]
    assert all(r["status"] == "ok" for i, r in rows.items() if i != poisoned)


def test_a_dead_engine_ends_its_actor_and_the_batch_is_scored_by_a_new_one(tmp_path, tiny_model):
    """vLLM's engine core dies mid-run (as after a GPU fault): the actor ends itself, Ray replaces it,
    and the batch it held is scored again; nothing is lost or written twice."""
    from qeval_ray.testing import synthetic

    manifest = synthetic.make_corpus(tmp_path / "c", images=24, videos=0, with_errors=False, max_side=96)
    out, marker = tmp_path / "out", tmp_path / "engine-killed"
    args = job(manifest, out, tiny_model, "--enforce-eager", "--concurrency", "1")
    args[args.index("--engine") + 1] = "vllm"
    proc = subprocess.run(args, cwd=REPO, timeout=900,
                          env=env(QEVAL_CHAOS=f"kill_engine_once={marker};hang_after=1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists()  # the engine core really was killed
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["scoring_actor_crashes"] >= 1
    table = pq.read_table(out / "scores", columns=["id", "status"])
    assert sorted(table.column("id").to_pylist()) == sorted(pq.read_table(manifest).column("id").to_pylist())
    assert set(table.column("status").to_pylist()) == {"ok"}


CLUSTER = """
import json, sys, time
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, connect=False,
                  head_node_args={"num_cpus": 2, "object_store_memory": 300 * 2**20, "include_dashboard": False})
worker = cluster.add_node(num_cpus=2, object_store_memory=300 * 2**20)
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address}), flush=True)
for line in sys.stdin:
    if line.strip() == "remove-worker":
        cluster.remove_node(worker, allow_graceful=False)
        print("removed", flush=True)
    elif line.strip() == "stop":
        break
cluster.shutdown()
"""


def test_losing_a_worker_node_loses_and_duplicates_nothing(corpus, tiny_model, tmp_path):
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env=env(), start_new_session=True)
    try:
        address = json.loads(cluster.stdout.readline())["address"]
        out = tmp_path / "out"
        run = subprocess.Popen(job(corpus, out, tiny_model, "--concurrency", "2", "--ray-address", address),
                               cwd=REPO, env=env(QEVAL_CHAOS="delay_s=0.25"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_for(lambda: len(committed(out)) >= 2, 300, "the first score files")
        cluster.stdin.write("remove-worker\n")
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "removed"
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stderr[-3000:]
        ids = ids_of(out)
        assert len(ids) == len(set(ids)) == ITEMS
        assert json.loads((out / "_summary.json").read_text())["rows_out"] == ITEMS
    finally:
        if cluster.poll() is None:
            cluster.stdin.write("stop\n")
            cluster.stdin.flush()
            try:
                cluster.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(cluster.pid, signal.SIGKILL)


def test_ray_job_submit_against_a_local_head(tiny_model, tmp_path):
    """The README's commands: `ray start --head`, then `ray job submit --working-dir . -- python jobs/score.py`."""
    from qeval_ray.testing import synthetic
    from s3server import free_port

    manifest = synthetic.make_corpus(tmp_path / "c", images=12, videos=1, with_errors=True, max_side=96)
    bin_dir = str(Path(sys.executable).parent)
    head_env = env(PATH=bin_dir + os.pathsep + os.environ["PATH"])
    temp_dir = head_env["RAY_TMPDIR"]
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen([f"{bin_dir}/ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp_dir}",
                             "--include-dashboard=true"], env=head_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        out = tmp_path / "out"
        job_id = f"qeval-test-{os.getpid()}-{int(time.time())}"
        submit = [f"{bin_dir}/ray", "job", "submit", "--address", address, "--submission-id", job_id,
                  "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps({"excludes": [".venv", ".demo", ".git", "tests", "benchmarks"]}),
                  "--", "python", "jobs/score.py", "--input", str(manifest), "--output", str(out),
                  "--model", tiny_model, "--engine", "hf", "--num-cpus-per-actor", "0.5",
                  "--max-pixels", str(16 * 28 * 28), "--video-max-pixels", str(16 * 28 * 28)]
        deadline = time.time() + 120
        while True:  # the job server comes up a few seconds after the head
            proc = subprocess.run(submit, env=head_env, capture_output=True, text=True, timeout=900)
            if proc.returncode == 0 or time.time() > deadline or "Connection" not in proc.stdout + proc.stderr:
                break
            time.sleep(2)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        assert "succeeded" in (proc.stdout + proc.stderr).lower()
        from ray.job_submission import JobStatus, JobSubmissionClient

        assert JobSubmissionClient(address).get_job_status(job_id) == JobStatus.SUCCEEDED
        summary = json.loads((out / "_summary.json").read_text())
        assert summary["rows_in"] == summary["rows_out"] == 15
        assert summary["by_status"]["ok"] == 13
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
