"""Resume benchmark: a rerun over a finished output against the full run, and the driver's memory
as the corpus grows.

    python benchmarks/resume.py [--small 1000] [--large 10000] [--engine hf] [--json OUT.json]

In one run of the script, on generated corpora of small images and the tiny model (CPU):
- the full job on the small and the large corpus (time, and the driver's own peak memory, which
  the job records in _summary.json), and
- the same command again over each finished output (it must find everything done).
It prints the rerun/full time ratios (goal: at most 5%) and the driver peak memory ratio
large/small (goal: flat, at most 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_job(manifest: Path, out: Path, model: str, engine: str) -> tuple[float, dict, str]:
    cmd = [sys.executable, "jobs/score.py", "--input", str(manifest), "--output", str(out), "--model", model,
           "--engine", engine, "--num-cpus-per-actor", "0.5", "--batch-size", "32", "--decode-batch-size", "16",
           "--max-pixels", str(16 * 28 * 28), "--no-report"] + (["--enforce-eager"] if engine == "vllm" else [])
    env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="qr", dir="/tmp"))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    return elapsed, json.loads((out / "_summary.json").read_text()), proc.stdout


def main(argv=None) -> dict:
    from qeval_ray.testing import synthetic, tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="qeval-resume-bench-"))
    model = str(tiny_model.build(work / "model"))
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "engine": args.engine, "sizes": {}}
    for n in (args.small, args.large):
        manifest = synthetic.make_corpus(work / f"c{n}", images=n, videos=0, with_errors=False, max_side=64)
        full_s, summary, _ = run_job(manifest, work / f"out{n}", model, args.engine)
        rerun_s, _, stdout = run_job(manifest, work / f"out{n}", model, args.engine)
        assert "already complete" in stdout, stdout
        result["sizes"][n] = {"full_s": full_s, "rerun_s": rerun_s, "rerun_over_full": rerun_s / full_s,
                              "driver_peak_mb": summary["driver_peak_mb"], "items_per_s": summary["items_per_s"]}
        print(f"{n:>6} items: full {full_s:6.1f} s ({summary['items_per_s']:.1f} items/s), rerun over the "
              f"finished output {rerun_s:5.1f} s = {rerun_s / full_s:.1%} of it; driver peak "
              f"{summary['driver_peak_mb']:.0f} MB")
    small, large = result["sizes"][args.small], result["sizes"][args.large]
    result["driver_peak_large_over_small"] = large["driver_peak_mb"] / small["driver_peak_mb"]
    print(f"driver peak memory {args.large} vs {args.small} items: {result['driver_peak_large_over_small']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
