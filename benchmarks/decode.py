"""Decode-stage benchmark: our video decode against the raw decoders and the reference's own path.

    python benchmarks/decode.py [--long-seconds 60] [--skip-reference] [--json OUT.json]

On the same generated clips, each mode in a fresh subprocess (so peak memory is its own):

  stage           qeval_ray.media.decode_video (PyAV, sampled frames only, resized as decoded)
  stage-decord    the same with --video-decoder decord
  raw-pyav        PyAV alone: decode, convert only the sampled frames to RGB (no resize)
  raw-decord      decord alone: get_batch on the same indices (no resize)
  raw-*+resize    the raw decoder plus the reference's resize: the same work as the stage
  reference       qwen-vl-utils fetch_video, as the reference calls it (decodes every frame first)

It prints frames/s, seconds, peak memory above the process's baseline, the ratios the issue asks
for, and whether the stage's frames equal the reference's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
import numpy as np
from qeval_ray import media
media.import_decord()
import torch, av  # noqa: F401  loaded before the baseline, as in a warm worker
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
opts = media.VideoOptions()
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def pyav_frames(indices):
    import io
    wanted = set(indices)
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]; s.thread_type = "AUTO"
        for i, f in enumerate(c.decode(s)):
            if i in wanted:
                yield f.to_ndarray(format="rgb24")
            if i >= indices[-1]:
                break
def decord_reader():
    import io
    return media.import_decord().VideoReader(io.BytesIO(data), num_threads=1)
def plan():
    import io
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.video[0]
        total = sum(1 for p in c.demux(s) if p.size)
        fps = float(s.average_rate)
    return media.frame_indices(total, fps, opts)
base = rss()
t = time.perf_counter()
if mode in ("stage", "stage-decord"):
    clip = media.decode_video(data, media.VideoOptions(decoder="decord" if mode == "stage-decord" else "pyav"))
    frames, n = clip.frames, len(clip.indices)
elif mode.startswith("raw-pyav"):
    idx = plan(); n = len(idx); frames = None
    for f in pyav_frames(idx):
        if mode.endswith("+resize"):
            size = media.frame_size(f.shape[0], f.shape[1], media.padded_count(n), opts)
            media._resize_frame(f, size)
elif mode.startswith("raw-decord"):
    vr = decord_reader(); idx = plan(); n = len(idx); frames = None
    for i in idx:  # one frame per call: the batch call on all indices holds every source-size frame
        f = vr.get_batch([i]).asnumpy()[0]
        if mode.endswith("+resize"):
            size = media.frame_size(f.shape[0], f.shape[1], media.padded_count(n), opts)
            media._resize_frame(f, size)
elif mode == "reference":
    from qwen_vl_utils import fetch_video
    video, meta = fetch_video({"video": path, "fps": opts.fps, "max_pixels": opts.max_pixels},
                              return_video_metadata=True)
    frames = video.permute(0, 2, 3, 1).numpy().astype(np.uint8); n = len(meta["frames_indices"])
elapsed = time.perf_counter() - t
if frames is not None and out != "-":
    np.save(out, frames)
print(json.dumps({"seconds": elapsed, "frames": n, "peak_bytes": rss() - base}))
"""

MODES = ["stage", "stage-decord", "raw-pyav", "raw-decord", "raw-pyav+resize", "raw-decord+resize", "reference"]


def run_mode(mode: str, clip: Path, out: Path, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, mode, str(clip), str(out)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    import numpy as np

    from qeval_ray.testing import synthetic

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long-seconds", type=int, default=60, help="length of the 1080p clip")
    parser.add_argument("--skip-reference", action="store_true", help="skip qwen-vl-utils (it needs ~19 GB on the long clip)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="qeval-decode-bench-"))
    clips = {
        "5s 854x480 @24": synthetic.write_video(work / "c480.mp4", 5 * 24, 24, 854, 480, seed=1),
        "5s 1280x720 @30": synthetic.write_video(work / "c720.mp4", 5 * 30, 30, 1280, 720, seed=2),
        f"{args.long_seconds}s 1920x1080 @30": synthetic.write_video(
            work / "c1080.mp4", args.long_seconds * 30, 30, 1920, 1080, seed=3),
    }
    results: dict = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                                f"{__import__('os').cpu_count()} cores", "clips": {}}
    print(f"{'clip':<22}{'mode':<20}{'frames':>7}{'seconds':>9}{'frames/s':>10}{'peak MB':>9}")
    for name, clip in clips.items():
        rows = {}
        for mode in MODES:
            if mode == "reference" and args.skip_reference:
                continue
            out = work / f"{clip.stem}-{mode}.npy"
            r = run_mode(mode, clip, out, timeout=1800)
            if "error" not in r:
                r["frames_per_s"] = r["frames"] / r["seconds"]
                print(f"{name:<22}{mode:<20}{r['frames']:>7}{r['seconds']:>9.2f}{r['frames_per_s']:>10.1f}"
                      f"{r['peak_bytes'] / 2**20:>9.0f}")
            else:
                print(f"{name:<22}{mode:<20}  failed: {r['error']}")
            rows[mode] = r
        stage = rows["stage"]
        ratios = {}
        raw_best = max((rows[m]["frames_per_s"] for m in ("raw-pyav", "raw-decord") if "frames_per_s" in rows[m]),
                       default=None)
        same_work = max((rows[m]["frames_per_s"] for m in ("raw-pyav+resize", "raw-decord+resize")
                         if "frames_per_s" in rows[m]), default=None)
        if raw_best:
            ratios["stage / faster raw decoder (no resize)"] = stage["frames_per_s"] / raw_best
        if same_work:
            ratios["stage / faster raw decoder + same resize"] = stage["frames_per_s"] / same_work
        ref = rows.get("reference", {})
        if "seconds" in ref:
            ratios["stage time / reference time"] = stage["seconds"] / ref["seconds"]
            ratios["stage memory / reference memory"] = stage["peak_bytes"] / max(ref["peak_bytes"], 1)
            a, b = np.load(work / f"{clip.stem}-stage.npy"), np.load(work / f"{clip.stem}-reference.npy")
            ratios["frames equal the reference's"] = bool(a.shape == b.shape and np.array_equal(a, b))
        for key, value in ratios.items():
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
        results["clips"][name] = {"modes": rows, "ratios": ratios}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
