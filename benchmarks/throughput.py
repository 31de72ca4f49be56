"""Throughput benchmark: the job against the reference loop, side by side, on the same items.

    python benchmarks/throughput.py [--arch tiny|qwen2-vl-7b] [--items 64] [--image-size 1024] [--video]
                                    [--json OUT.json]

Modes, each in its own process (so one mode's memory is not another's), on the same generated items
(--image-size square images, 1024 by default, or with --video 5-second clips at 8 fps / 100,352 pixels
per frame):

  1 reference   HF transformers, one item and one aspect at a time, as the reference's infer.py does:
                qwen-vl-utils' process_vision_info per call, the processor, a full-vocabulary forward
  2 vllm-q      the vLLM engine (AsyncLLM) in-process, quality only, every item in flight at once
  3 vllm-qa     the vLLM engine, quality + alignment per item (the second prompt sent once the first
                is prefilled, without pixels: the shared media prefix at work)
  4 job         the whole Ray Data job (decode tasks, a scoring actor, parquet out), quality only;
                timed on the items and on half of them, and reported as the marginal rate, which
                cancels Ray's and the engine's start-up
  5 hf-qa       the project's HF engine, batched, quality + alignment (the fallback engine)

Rates are scored prompts (item x aspect) per second, so modes scoring one or two aspects compare as
equal work; items/s is printed too. Ratios: 2/1, 3/2 (as time for the same items: the second aspect's
cost), 4/2, 5/1. It checks that every mode gave the same scores (within 1e-4) and writes a JSON file.

--arch qwen2-vl-7b is the real Qwen2-VL-7B structure with random weights (vLLM load_format="dummy",
HF random initialisation on the device) and a locally built tokenizer: the real model's compute,
nothing downloaded. Its text prompts are tokenized by that tokenizer (trained on the prompts, so a
little shorter than with Qwen's); the image tokens, which dominate, are exact.

On a lent GPU machine, which lacks qwen-vl-utils, PyAV and vLLM, bring them first with
benchmarks/device.py (see the README's "Measuring on a lent GPU machine").
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ASPECTS = ("quality", "alignment")
# Dense bf16 tensor-core peaks (NVIDIA datasheets, without sparsity), matched on the device name.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}
MODES = {1: "reference", 2: "vllm-q", 3: "vllm-qa", 4: "job", 5: "hf-qa"}
# The worker process that runs each mode, and the aspects it scores.
WORKERS = {1: ("reference", "quality"), 2: ("vllm", "quality"), 3: ("vllm", "quality,alignment"),
           4: ("job", "quality"), 5: ("hf", "quality,alignment")}


# --- items ----------------------------------------------------------------------------------


def make_items(work: Path, n: int, video: bool, side: int = 1024) -> tuple[Path, list[dict]]:
    """Generated media, a manifest for the job, and the decoded pixels every engine mode scores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qeval_ray import media

    from qeval_ray.testing import synthetic

    (work / "media").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        if video:
            path = synthetic.write_video(work / "media" / f"v{i:04d}.mp4", 40, 8, 640, 360, seed=i)
            pixels = media.decode_video(path.read_bytes()).frames
        else:
            path = synthetic.save_image(work / "media" / f"i{i:04d}.png", synthetic.pattern(side, side, i))
            pixels = media.decode_image(path.read_bytes())
        items.append({"id": f"item-{i:04d}", "path": str(path), "prompt": synthetic.prompt_for(i),
                      "kind": "video" if video else "image", "pixels": pixels})
    manifest = work / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{k: it[k] for k in ("id", "prompt")} | {"uri": it["path"]}
                                         for it in items]), manifest)
    return manifest, items


def requests_for(items, aspects):
    from qeval_ray.engines.base import Media, ScoreRequest
    from qeval_ray.media import pixel_digest
    from qeval_ray.scorers.qeval import context_prompt

    requests = []
    for it in items:
        media = Media(it["kind"], it["pixels"], pixel_digest(it["pixels"]))
        requests += [ScoreRequest(media, context_prompt(a, it["kind"], it["prompt"])) for a in aspects]
    return requests


def scores_of(logprobs: np.ndarray, items, aspects) -> dict[str, list[float]]:
    from qeval_ray.scorers.qeval import rating_probabilities, score_from_probabilities

    per = logprobs.reshape(len(items), len(aspects), -1)
    return {it["id"]: [float(score_from_probabilities(rating_probabilities(p))) for p in per[k]]
            for k, it in enumerate(items)}


# --- the modes (run in worker processes) -----------------------------------------------------


def _gpu_peak(reset: bool = False) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_reserved() / 2**30


async def _timed_batches(engine, items, aspects, batch_size):
    """All items through the engine as the score stage feeds it: a concurrent engine gets every item
    on its own, all in flight at once; a batch engine gets batches, one call at a time."""
    import asyncio

    from qeval_ray.scorers.qeval import RATING_TOKENS

    token_ids = engine.token_ids(RATING_TOKENS)
    await engine.reset_caches()  # cold: no prefix or media cached from the warm-up or an earlier mode
    _gpu_peak(reset=True)
    start = time.perf_counter()
    if engine.concurrent:
        n = len(aspects)
        requests = requests_for(items, aspects)
        per_item = await asyncio.gather(*(engine.item_logprobs(requests[k * n:(k + 1) * n], token_ids)
                                          for k in range(len(items))))
        out = np.concatenate(per_item)
    else:
        out = np.concatenate([engine.next_token_logprobs(requests_for(items[s : s + batch_size], aspects), token_ids)
                              for s in range(0, len(items), batch_size)])
    return time.perf_counter() - start, out


def mode_engine(args, items, engine_name: str, aspects_list):
    import asyncio

    from qeval_ray.engines import load_engine
    from qeval_ray.engines.base import EngineConfig

    cfg = EngineConfig(model=args.model, dtype=args.dtype, device=args.device, enforce_eager=args.device == "cpu",
                       max_num_batched_tokens=args.max_num_batched_tokens, load_format=args.load_format,
                       hf_batch_size=2 * args.batch_size, gpu_memory_utilization=0.85)
    engine = load_engine(engine_name, cfg)

    async def timed_modes():  # one event loop: vLLM's AsyncLLM stays bound to the loop it started on
        for aspects in aspects_list:  # warm-up over every batch shape first (not timed); caches reset after
            await _timed_batches(engine, items, aspects, args.batch_size)
        results = {}
        for aspects in aspects_list:
            seconds, logprobs = await _timed_batches(engine, items, aspects, args.batch_size)
            results[",".join(aspects)] = {"seconds": seconds, "scores": scores_of(logprobs, items, aspects),
                                          "peak_gpu_gb": _gpu_peak()}
        return results

    results = asyncio.run(timed_modes())
    engine.close()
    return results


def mode_reference(args, items):
    """The reference's own loop: one item, one aspect, its preprocessing, a full-vocabulary forward."""
    import torch
    from qwen_vl_utils import process_vision_info
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    from qeval_ray.engines.base import first_token_ids, processor_kwargs
    from qeval_ray.engines.hf import reference_position_ids
    from qeval_ray.scorers.qeval import RATING_TOKENS, RATING_WEIGHTS, context_prompt, rating_probabilities

    processor = AutoProcessor.from_pretrained(args.model)
    dtype = getattr(torch, args.dtype)
    if args.load_format == "dummy":
        with torch.device(args.device):
            model = Qwen2VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(args.model), dtype=dtype)
    else:
        model = Qwen2VLForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device)
    model.eval()
    ids = first_token_ids(processor.tokenizer, RATING_TOKENS)
    kwargs = processor_kwargs(processor)  # the reference's transformers (4.46) did not resize again

    def score(item, aspect):
        media = ({"type": "video", "video": item["path"], "fps": 8, "max_pixels": 100_352} if item["kind"] == "video"
                 else {"type": "image", "image": item["path"]})
        messages = [{"role": "user", "content": [media, {"type": "text",
                                                         "text": context_prompt(aspect, item["kind"], item["prompt"])}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images, videos = process_vision_info(messages)
        inputs = processor(text=[text], images=images, videos=videos, padding=True, return_tensors="pt",
                           **kwargs).to(args.device)
        # M-RoPE positions by the reference's rule (transformers 5.x differs for videos).
        positions = reference_position_ids(inputs["input_ids"], inputs["attention_mask"], inputs.get("image_grid_thw"),
                                           inputs.get("video_grid_thw"), model.config)
        with torch.inference_mode():
            logits = model(**inputs, position_ids=positions)["logits"][:, -1]
        p = rating_probabilities(logits[0, ids].float().cpu().numpy())
        return float(p @ np.asarray(RATING_WEIGHTS))

    score(items[0], "quality")  # warm-up, not timed
    _gpu_peak(reset=True)
    start = time.perf_counter()
    scores = {it["id"]: [score(it, "quality")] for it in items}
    return {"quality": {"seconds": time.perf_counter() - start, "scores": scores, "peak_gpu_gb": _gpu_peak()}}


def mode_job(args, manifest: Path, work: Path):
    """The whole job on all items and on half of them; the marginal rate cancels start-up."""
    import pyarrow.parquet as pq

    if args.load_format == "dummy":
        return {"skipped": "the job loads real weights; run it with --arch tiny or a real checkpoint"}
    table = pq.read_table(manifest)
    half = work / "manifest_half.parquet"
    pq.write_table(table.slice(0, table.num_rows // 2), half)
    timings = {}
    for name, path in (("half", half), ("all", manifest)):
        out = work / f"job_{name}"
        cmd = [sys.executable, str(REPO / "jobs" / "score.py"), "--input", str(path), "--output", str(out),
               "--model", args.model, "--engine", "vllm", "--aspects", "quality", "--dtype", args.dtype,
               "--batch-size", str(args.batch_size), "--no-report", "--concurrency", "1"]
        if args.device == "cpu":
            cmd += ["--enforce-eager", "--num-cpus-per-actor", "0.5", "--num-gpus-per-actor", "0"]
        if args.max_num_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        env = dict(os.environ, RAY_TMPDIR=tempfile.mkdtemp(prefix="qr", dir="/tmp"))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        timings[name] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
    rows = pq.read_table(work / "job_all" / "scores", columns=["id", "quality"]).to_pylist()
    n_all, n_half = table.num_rows, table.num_rows // 2
    extra = timings["all"] - timings["half"]
    if extra > 0.1 * timings["half"]:
        seconds, method = extra * n_all / max(n_all - n_half, 1), "marginal: (all - half) / extra items"
    else:  # too few items for the difference to rise above run-to-run noise
        seconds, method = timings["all"], "end to end, start-up included (too few items for a marginal rate)"
    return {"quality": {"seconds": seconds, "rate_method": method, "wall_all_s": timings["all"],
                        "wall_half_s": timings["half"], "scores": {r["id"]: [r["quality"]] for r in rows}}}


def worker(args) -> None:
    import pickle

    from qeval_ray.media import import_decord

    if _installed("decord"):  # the GPU machines may lack it; images need no video reader
        import_decord()  # before qwen-vl-utils imports it (see qeval_ray.media.import_decord)

    with open(args.items_file, "rb") as f:
        manifest, items = pickle.load(f)
    if args.worker == "reference":
        result = mode_reference(args, items)
    elif args.worker in ("vllm", "hf"):
        result = mode_engine(args, items, args.worker, [tuple(args.aspects.split(","))])
    else:
        result = mode_job(args, Path(manifest), Path(args.items_file).parent)
    Path(args.result_file).write_text(json.dumps(result))


# --- the harness ----------------------------------------------------------------------------


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def prompt_tokens(model: str, items, aspects) -> list[int]:
    """Tokens per prompt (text + media), as the processor counts them."""
    from transformers import AutoProcessor

    from qeval_ray.engines.base import chat_prompt, processor_kwargs

    processor = AutoProcessor.from_pretrained(model)
    counts = []
    for r in requests_for(items, aspects):
        key = "images" if r.media.kind == "image" else "videos"
        out = processor(text=[chat_prompt(processor, r)], **{key: [r.media.pixels]}, return_tensors="np",
                        **processor_kwargs(processor))
        counts.append(int(out["input_ids"].shape[1]))
    return counts


def prefill_flops(config_dir: str, items, tokens: list[int], aspects) -> float:
    """Approximate model FLOPs of one full prefill of every prompt: 2 x parameters x tokens for the
    language model's layers and the vision tower's blocks, plus attention (causal in the text, full
    within a frame). The LM head (one position), embeddings and the patch merger are left out."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(config_dir)
    t, v = c.text_config, c.vision_config
    head = t.hidden_size // t.num_attention_heads
    lm_layer = (t.hidden_size * head * (t.num_attention_heads + 2 * t.num_key_value_heads)
                + t.num_attention_heads * head * t.hidden_size + 3 * t.hidden_size * t.intermediate_size)
    lm_params = t.num_hidden_layers * lm_layer
    vis_layer = 4 * v.embed_dim ** 2 + 2 * v.embed_dim * v.embed_dim * v.mlp_ratio
    total = 0.0
    for k, n in enumerate(tokens):
        item = items[k // len(aspects)]
        frames = item["pixels"].shape[0] // 2 if item["kind"] == "video" else 1
        h, w = item["pixels"].shape[-3] // v.patch_size, item["pixels"].shape[-2] // v.patch_size
        patches = frames * h * w
        total += 2 * lm_params * n + 2 * t.num_hidden_layers * n * n * t.hidden_size  # causal attention
        total += 2 * v.depth * vis_layer * patches + 4 * v.depth * frames * (h * w) ** 2 * v.embed_dim
    return total


def device_info() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            peak = next((p for k, p in BF16_PEAK_TFLOPS.items() if k in name), None)
            return {"device": name, "gpu": True, "bf16_peak_tflops": peak,
                    "peak_source": "NVIDIA datasheet, dense bf16" if peak else "unknown device"}
    except ImportError:
        pass
    return {"device": f"CPU ({platform.machine()}, {os.cpu_count()} cores)", "gpu": False, "bf16_peak_tflops": None}


def run(args) -> dict:
    import pickle

    from qeval_ray.testing import tiny_model

    work = Path(tempfile.mkdtemp(prefix="qeval-throughput-"))
    info = device_info()
    args.device = "cuda" if info["gpu"] else "cpu"
    args.dtype = args.dtype or ("bfloat16" if info["gpu"] else "float32")
    args.model = str(tiny_model.build(work / "model", arch=args.arch))
    args.load_format = "dummy" if args.arch != "tiny" else "auto"
    manifest, items = make_items(work, args.items, args.video, args.image_size)
    items_file = work / "items.pkl"
    with open(items_file, "wb") as f:
        pickle.dump((str(manifest), items), f)
    tokens = prompt_tokens(args.model, items, ASPECTS)
    quality_tokens = tokens[0::2]
    flops_q = prefill_flops(args.model, items, quality_tokens, ("quality",))
    flops_qa = prefill_flops(args.model, items, tokens, ASPECTS)

    modes: dict = {}

    def report() -> dict:
        return {"device": info, "arch": args.arch, "video": args.video, "date": time.strftime("%Y-%m-%d"),
                "settings": {"items": args.items, "batch_size": args.batch_size, "dtype": args.dtype,
                             "max_num_batched_tokens": args.max_num_batched_tokens,
                             "media": "5 s clips, 8 fps, 100,352 px/frame" if args.video
                             else f"{args.image_size}x{args.image_size} images",
                             "mean_prompt_tokens": float(np.mean(tokens))},
                "modes": modes, "ratios": ratios(modes), "parity": parity(modes)}

    def run_worker(worker_name: str, produced: dict) -> None:
        missing = {"vllm": "vllm", "job": "ray"}.get(worker_name)
        if missing and not _installed(missing):
            for m in produced:
                modes[m] = {"name": MODES[m], "skipped": f"{missing} is not installed here"}
            return
        result_file = work / f"{worker_name}.json"
        cmd = [sys.executable, __file__, "--worker", worker_name, "--aspects", ",".join(produced.values()),
               "--items-file", str(items_file),
               "--result-file", str(result_file), "--model", args.model, "--dtype", args.dtype,
               "--device", args.device, "--load-format", args.load_format, "--batch-size", str(args.batch_size)]
        if args.max_num_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if proc.returncode != 0:
            for m in produced:
                modes[m] = {"name": MODES[m], "failed": proc.stderr.strip().splitlines()[-1:] or ["?"],
                            "stderr_tail": proc.stderr[-3000:]}
            return
        result = json.loads(result_file.read_text())
        for m, key in produced.items():
            r = result.get(key, result)
            if "skipped" in r:
                modes[m] = {"name": MODES[m], "skipped": r["skipped"]}
                continue
            aspects = key.split(",")
            prompts = len(items) * len(aspects)
            flops = flops_qa if len(aspects) == 2 else flops_q
            seconds = r["seconds"]
            modes[m] = {
                "name": MODES[m], "aspects": aspects, "items": len(items), "seconds": seconds,
                "items_per_s": len(items) / seconds, "prompts_per_s": prompts / seconds,
                "prompt_tokens_per_s": sum(tokens if len(aspects) == 2 else quality_tokens) / seconds,
                "prefill_tflops_per_s": flops / seconds / 1e12,
                "fraction_of_bf16_peak": (flops / seconds / 1e12 / info["bf16_peak_tflops"]
                                          if info["bf16_peak_tflops"] else None),
                "peak_gpu_gb": r.get("peak_gpu_gb"), "scores": r["scores"],
                **{k: v for k, v in r.items() if k.startswith("wall_") or k == "rate_method"},
            }

    for mode in args.modes:  # in the order asked for: a cut-off run keeps the modes that matter most
        worker_name, aspects = WORKERS[mode]
        run_worker(worker_name, {mode: aspects})
        # Progress and a partial JSON after each: a device call that runs out of time keeps these.
        print(f"  {worker_name}: modes [{mode}] done", file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report(), indent=2))
    return report()


def _rate(modes, m):
    return modes.get(m, {}).get("prompts_per_s")


def ratios(modes) -> dict:
    out = {}
    for a, b, label in ((2, 1, "2/1 vllm batched vs reference loop (prompts/s)"),
                        (4, 2, "4/2 whole job vs bare vLLM engine (prompts/s)"),
                        (5, 1, "5/1 HF batched vs reference loop (prompts/s)")):
        if _rate(modes, a) and _rate(modes, b):
            out[label] = _rate(modes, a) / _rate(modes, b)
    if modes.get(3, {}).get("seconds") and modes.get(2, {}).get("seconds"):
        out["3/2 time of quality+alignment vs quality only (same items)"] = modes[3]["seconds"] / modes[2]["seconds"]
    return out


def parity(modes) -> dict:
    """The largest difference, per aspect, between any two modes' scores of the same items."""
    by_aspect: dict[str, list[dict]] = {}
    for r in modes.values():
        for k, aspect in enumerate(r.get("aspects", [])):
            by_aspect.setdefault(aspect, []).append({item: values[k] for item, values in r["scores"].items()})
    diff = None
    for runs in by_aspect.values():
        for other in runs[1:]:
            for item, value in runs[0].items():
                diff = max(diff or 0.0, abs(value - other[item]))
    return {"max_abs_diff": diff, "compared_modes": sorted(m for m, r in modes.items() if "scores" in r)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("tiny", "qwen2-vl-7b"), default="tiny")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--video", action="store_true")
    parser.add_argument("--image-size", type=int, default=1024, help="side of the square test images")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--json", default=None, help="written after each mode, so a cut-off run keeps what finished")
    parser.add_argument("--modes", default="1,2,3,4,5",
                        help="which modes to run, in this order, e.g. 3,1,2 (each in its own process)")
    # worker-process arguments
    for hidden in ("--worker", "--aspects", "--items-file", "--result-file", "--model", "--device", "--load-format"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.modes = list(dict.fromkeys(int(m) for m in args.modes.split(",")))
    except ValueError:
        parser.error("--modes takes mode numbers separated by commas, e.g. 1,5")
    if not set(args.modes) <= set(MODES):
        parser.error(f"--modes: unknown mode {sorted(set(args.modes) - set(MODES))}; the modes are {MODES}")
    if args.worker:
        worker(args)
        return {}
    report = run(args)
    print(f"device: {report['device']['device']}; arch {report['arch']}; {report['settings']}")
    print(f"{'mode':<14}{'aspects':<20}{'items/s':>10}{'prompts/s':>11}{'tokens/s':>12}{'TFLOP/s':>10}{'of peak':>9}")
    for m in sorted(report["modes"]):
        r = report["modes"][m]
        if "items_per_s" not in r:
            print(f"{m} {r['name']:<12}{r.get('skipped') or r.get('failed')}")
            continue
        peak = f"{r['fraction_of_bf16_peak']:.1%}" if r["fraction_of_bf16_peak"] is not None else "—"
        print(f"{m} {r['name']:<12}{','.join(r['aspects']):<20}{r['items_per_s']:>10.2f}{r['prompts_per_s']:>11.2f}"
              f"{r['prompt_tokens_per_s']:>12.0f}{r['prefill_tflops_per_s']:>10.3f}{peak:>9}")
    for label, value in report["ratios"].items():
        print(f"  {label}: {value:.2f}")
    print(f"  scores agree across modes {report['parity']['compared_modes']}: max |diff| {report['parity']['max_abs_diff']}")
    return report  # run() has written --json after the last mode


if __name__ == "__main__":
    main()
