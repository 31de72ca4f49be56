"""The model is resolved on the driver before Ray starts: a hub id that cannot be had stops the job in
seconds with one line; one in the local Hugging Face cache runs offline; local directories are checked.

(Two actors on one node copying an object-storage model once: tests/test_storage_s3.py, which has
the S3 server.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SMALL

HUB_ID = "qeval-test/tiny-scorer"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(model_dir: str, hf_home: Path, repo_id: str = HUB_ID, commit: str = COMMIT) -> Path:
    """``model_dir`` laid out as huggingface_hub caches a download of ``repo_id`` at ``commit``:
    hub/models--ORG--NAME/{refs/main, snapshots/COMMIT/<files>} (the files copied, not linked to
    blobs: huggingface_hub reads the snapshot directory either way)."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def manifest(tmp_path: Path, n: int = 4) -> Path:
    from qeval_ray.testing import synthetic

    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for i in range(n):
        path = synthetic.save_image(media / f"img_{i}.png", synthetic.pattern(56, 84, i))
        rows.append({"id": f"img-{i}", "uri": str(path), "prompt": synthetic.prompt_for(i)})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    return tmp_path / "manifest.parquet"


def run_job(args, hf_home: Path, offline: bool, timeout: float = 600, **env_extra):
    """`python jobs/score.py ARGS` with HF_HOME at ``hf_home``; return (process, seconds, Ray's temp dir)."""
    ray_tmp = tempfile.mkdtemp(prefix="qr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(hf_home), RAY_TMPDIR=ray_tmp, **env_extra)
    if offline:
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.time()
    proc = subprocess.run([sys.executable, "jobs/score.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - started, Path(ray_tmp)


def assert_stopped_before_ray(proc, seconds, ray_tmp, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert seconds < 30, seconds
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qeval-ray: error: --model "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert not any(ray_tmp.iterdir()), "Ray was started"  # so no scoring actor was either
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_hub_id_offline_and_not_cached_stops_in_seconds_with_one_line(tmp_path):
    """The default model (a hub id) on an air-gapped machine: HF_HUB_OFFLINE set, empty cache."""
    proc, seconds, ray_tmp = run_job(["--input", manifest(tmp_path, 1), "--output", tmp_path / "out",
                                      "--engine", "hf"], tmp_path / "hf", offline=True)
    assert_stopped_before_ray(proc, seconds, ray_tmp, "AGI-Eval-Official/Q-Eval-Score", "HF_HUB_OFFLINE is set",
                              "not in the local cache", str(tmp_path / "hf"), "hf download")
    assert not (tmp_path / "out" / "scores").exists()


def test_hub_unreachable_and_not_cached_stops_in_seconds_with_one_line(tmp_path):
    """No HF_HUB_OFFLINE, but no hub either (here: nothing listens at HF_ENDPOINT; under
    scripts/offline huggingface.co does not resolve at all): one request, no retries, one line."""
    from s3server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    proc, seconds, ray_tmp = run_job(["--input", manifest(tmp_path, 1), "--output", tmp_path / "out",
                                      "--engine", "hf", "--model", HUB_ID, "--revision", "v1"],
                                     tmp_path / "hf", offline=False, HF_ENDPOINT=endpoint)
    assert_stopped_before_ray(proc, seconds, ray_tmp, f"--model {HUB_ID} --revision v1",
                              f"cannot reach the Hugging Face hub at {endpoint}", "not in the local cache",
                              f"hf download {HUB_ID} --revision v1")


def test_local_directories_are_checked(tmp_path, tiny_model):
    from qeval_ray.models import ModelUnavailable, resolve_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="no config.json there"):
        resolve_model(str(tmp_path / "empty"), None)
    with pytest.raises(ModelUnavailable, match="not a Hugging Face id"):
        resolve_model("models:q-eval", None)  # neither a directory nor ORG/NAME
    source = resolve_model(tiny_model, None)
    assert source.kind == "local" and source.uri == tiny_model and source.revision.startswith("local-sha256:")
    assert resolve_model("file://" + tiny_model, None) == source


def test_a_cached_snapshot_is_found_only_when_complete(tmp_path, tiny_model):
    """The driver's cache check, in a fresh process (huggingface_hub reads HF_HOME on import)."""
    snapshot = hub_cache(tiny_model, tmp_path / "hf")
    code = ("import sys; from qeval_ray.models import resolve_model\n"
            "try:\n  s = resolve_model(sys.argv[1], None); print(s.kind, s.revision, s.cache_only)\n"
            "except Exception as e: print(type(e).__name__)")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    check = lambda: subprocess.run([sys.executable, "-c", code, HUB_ID], cwd=REPO, env=env, capture_output=True,  # noqa: E731
                                   text=True, timeout=120).stdout.strip()
    assert check() == f"hub {COMMIT} True"
    (snapshot / "config.json").unlink()  # an interrupted download: the snapshot lacks files
    assert check() == "ModelUnavailable"


@pytest.mark.slow
def test_hub_id_in_the_local_cache_runs_offline(tmp_path, tiny_model):
    """HF_HUB_OFFLINE=1 and the hub id cached (built from the tiny model): the job runs, two actors
    load from the cached snapshot, and the provenance names the commit."""
    hub_cache(tiny_model, tmp_path / "hf")
    out = tmp_path / "out"
    proc, _, ray_tmp = run_job(["--input", manifest(tmp_path), "--output", out, "--model", HUB_ID, "--engine", "hf",
                                "--concurrency", "2", "--num-cpus-per-actor", "0.5", "--batch-size", "2", *SMALL],
                               tmp_path / "hf", offline=True)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pq.read_table(out / "scores")
    assert table.num_rows == 4 and set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("scorer_model").to_pylist()) == {HUB_ID}
    assert set(table.column("scorer_revision").to_pylist()) == {COMMIT}
