"""Report benchmark: time and peak memory of a correlation report over a large score directory.

    python benchmarks/report.py [--rows 1000000] [--json OUT.json]

Generates a score directory shaped like the job's output (scores, labels, 50 generators, both media,
prompts of varied length, and 300 bytes a row of a column the report never needs), then runs
``jobs/report.py`` on it in a fresh process and reports its wall time and peak memory beside the
size of the score files and of the full table in memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def make_scores(out: Path, rows: int, seed: int = 0, files: int = 8) -> None:
    rng = np.random.default_rng(seed)
    (out / "scores").mkdir(parents=True)
    per_file = -(-rows // files)
    generator_bias = rng.normal(0, 0.1, 50)
    for f in range(files):
        n = min(per_file, rows - f * per_file)
        g = rng.integers(0, 50, n)
        q = np.clip(rng.beta(5, 2, n) + generator_bias[g], 0, 1)
        a = rng.beta(4, 2, n)
        words = rng.integers(3, 60, n)
        table = pa.table({
            "id": [f"item-{f}-{i}" for i in range(n)],
            "status": np.where(rng.random(n) < 0.01, "decode_error", "ok"),
            "media_type": np.where(rng.random(n) < 0.3, "video", "image"),
            "model": [f"gen-{k:02d}" for k in g],
            "prompt": [" ".join(["word"] * w) for w in words],
            "quality": q, "alignment": a,
            "quality_mos": 1 + 4 * q + rng.normal(0, 0.5, n),
            "alignment_mos": np.where(rng.random(n) < 0.05, np.nan, 1 + 4 * a + rng.normal(0, 0.5, n)),
            "unneeded": ["x" * 300] * n,
        })
        pq.write_table(table, out / "scores" / f"part-{f}.parquet")
    (out / "_summary.json").write_text(json.dumps({"provenance": {"engine": "benchmark"}}))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="qeval-report-bench-"))
    t = time.perf_counter()
    make_scores(work / "out", args.rows)
    print(f"generated {args.rows} score rows in {time.perf_counter() - t:.1f} s")
    files = sum(p.stat().st_size for p in (work / "out" / "scores").iterdir())
    full = pq.read_table(work / "out" / "scores").nbytes
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "jobs/report.py", "--scores", str(work / "out"),
                           "--output", str(work / "report")], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    report = json.loads((work / "report" / "report.json").read_text())
    result = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "rows": args.rows, "score_files_mb": files / 2**20, "full_table_in_memory_mb": full / 2**20,
        "report_seconds": elapsed, "report_peak_rss_mb": peak / 2**20, "figures": len(report["figures"]),
        "ci_methods": sorted({f["ci_method"] for f in report["figures"] if f.get("ci_method")}),
    }
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
