"""Curation benchmark: time and peak memory of jobs/curate.py over many generated score rows.

    python benchmarks/curate.py [--rows 10000000] [--group-size 4] [--memory-limit 2GB] [--json OUT.json]

Generates a score directory shaped like the score job's output (id, uri, media type, generator,
a prompt of about 80 characters shared by --group-size generations, status with 1% errors, both
aspects with their five probabilities and spreads, the provenance columns), in files of a million
rows, column by column with numpy/pyarrow. Then runs ``jobs/curate.py`` on it in a fresh process
with every stage in use (a combined reward, a per-generator quantile bound, a spread cap, top-k,
all pairs with a margin, a cap and an uncertainty rule, advantages, histograms), and reports its
wall time and peak resident memory beside the size of the score files and of the full table in
memory (as pyarrow would hold it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
TOKENS = ("excellent", "good", "fair", "poor", "bad")
LEVELS = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
WEIGHTS = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
GENERATORS = 20


def _strings(prefix: str, numbers: np.ndarray, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), suffix, "")


def make_scores(out: Path, rows: int, group_size: int, seed: int = 0, per_file: int = 1_000_000) -> int:
    """Write ``rows`` score rows under ``out/scores``; returns the full table's size in memory."""
    rng = np.random.default_rng(seed)
    (out / "scores").mkdir(parents=True)
    bias = rng.normal(0, 0.6, GENERATORS)
    nbytes = 0
    for f, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        index = np.arange(start, start + n)
        generator = rng.integers(0, GENERATORS, n)
        columns = {
            "id": _strings("item-", index),
            "uri": _strings("s3://generations/run-42/", index, ".png"),
            "media_type": pa.array(np.where(index % 10 == 0, "video", "image")),
            "model": pa.array(np.char.add("gen-", np.char.zfill(generator.astype(str), 2))),
            "prompt": _strings("a detailed photograph of subject number ", index // group_size,
                               " at golden hour, shallow depth of field, 35mm"),
            "status": pa.array(np.where(rng.random(n) < 0.01, "decode_error", "ok")),
        }
        columns["error"] = pa.nulls(n, pa.string())
        for aspect in ("quality", "alignment"):
            logits = rng.normal(0, 1.5, (n, 5))
            logits[:, 0] += bias[generator] if aspect == "quality" else 0
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            columns[aspect] = pa.array(p @ WEIGHTS)
            for k, token in enumerate(TOKENS):
                columns[f"{aspect}_p_{token}"] = pa.array(p[:, k])
            mean = p @ LEVELS
            columns[f"{aspect}_std"] = pa.array(np.sqrt((p * (LEVELS - mean[:, None]) ** 2).sum(axis=1)))
        for name, value in (("scorer_model", "AGI-Eval-Official/Q-Eval-Score"), ("scorer_revision", "benchmark"),
                            ("prompt_version", "qeval100k-v1"), ("engine", "vllm"), ("dtype", "float16"),
                            ("code_version", "benchmark")):
            columns[name] = pa.array(np.full(n, value))
        table = pa.table(columns)
        nbytes += table.nbytes
        pq.write_table(table, out / "scores" / f"part-{f:03d}.parquet")
    (out / "_summary.json").write_text(json.dumps({"provenance": {"engine": "benchmark"}}))
    return nbytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--group-size", type=int, default=4, help="generations per prompt")
    parser.add_argument("--memory-limit", default="2GB", help="jobs/curate.py --memory-limit")
    parser.add_argument("--threads", type=int, default=None, help="jobs/curate.py --threads")
    parser.add_argument("--work", default=None, help="where to generate the scores (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="qeval-curate-bench-"))
    try:
        t = time.perf_counter()
        in_memory = make_scores(work / "out", args.rows, args.group_size)
        print(f"generated {args.rows} score rows in {time.perf_counter() - t:.1f} s", flush=True)
        files = sum(p.stat().st_size for p in (work / "out" / "scores").iterdir())
        command = [sys.executable, "jobs/curate.py", "--scores", str(work / "out"), "--output", str(work / "cur"),
                   "--reward", "0.6*quality + 0.4*alignment", "--min", "alignment=q0.05", "--max-std", "1.6",
                   "--top-k", "2", "--pairs", "all", "--min-margin", "0.02", "--max-pairs-per-group", "4",
                   "--pair-max-std", "1.4", "--memory-limit", args.memory_limit]
        if args.threads:
            command += ["--threads", str(args.threads)]
        env = dict(os.environ, TMPDIR=str(work))  # duckdb's database and spill files beside the data
        t = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        print(proc.stdout)
        report = json.loads((work / "cur" / "curation.json").read_text())
        outputs = {p.name: p.stat().st_size / 2**20 for p in (work / "cur").iterdir() if p.is_file()}
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": args.rows,
            "group_size": args.group_size, "memory_limit": args.memory_limit, "threads": args.threads,
            "score_files_mb": files / 2**20, "full_table_in_memory_mb": in_memory / 2**20,
            "curate_seconds": elapsed, "curate_peak_rss_mb": peak / 2**20,
            "kept": report["counts"]["kept"], "pairs": report["pairs"]["written"],
            "groups": report["groups"]["groups"], "output_mb": outputs,
        }
        for key, value in result.items():
            print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return result
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
