"""How busy the score stage keeps vLLM, and what the scoring actor spends per item: before and after
continuous feeding, side by side in one run.

    python benchmarks/feeding.py [--items 96] [--batch-size 8] [--in-flight 4] [--json OUT.json]

  before  the score stage as it was: vLLM's blocking ``LLM.generate``, an item's prompts in waves
          (every item's first prompt, then every second prompt), one batch at a time; the engine
          drains at every wave and at every batch boundary
  after   the score stage as it is: ``AsyncLLM``, each item's later prompts sent once its first is
          prefilled (without pixels: the media digest is the cache key), several batches in flight

Both run the real score stage (``stages.score.ScoreStage``, the Q-Eval scorer, quality + alignment)
in this process, fed from items decoded beforehand by the real decode stage (so decoding, 2 cores
here, does not starve it), with the engine core in its own process in both (as on GPUs). Measured:

1. engine busy fraction: the share of the stage's wall time during which vLLM had at least one
   request queued or running, sampled every millisecond from vLLM's own count of unfinished
   requests; on 224x224 images (64 visual tokens), so the tiny model's engine is fast, as a GPU is;
2. actor CPU per item outside the engine core: this process's CPU time per item (front-end: prompt
   rendering, HF patchifying, hashing; the stage's own work), on 1024x1024 images and 5 s clips
   (8 fps, 100,352 pixels per frame).

Each configuration runs in its own process. The scores of before and after must agree (checked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MEDIA = {"small": "224x224 images", "large": "1024x1024 images", "clips": "5 s clips, 8 fps, 100,352 px/frame"}


# --- the engine as it was (the baseline) ------------------------------------------------------


def wave_engine(config):
    """The vLLM engine before this change: blocking ``LLM.generate`` per wave of a batch."""
    from vllm import LLM, SamplingParams

    from qeval_ray.engines.base import Engine, chat_prompt, processor_kwargs

    class WaveEngine(Engine):
        name = "vllm-waves"

        def __init__(self, config):
            super().__init__(config)
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(config.model)
            self.llm = LLM(model=config.model, dtype=config.dtype, seed=config.seed, enable_prefix_caching=True,
                           limit_mm_per_prompt={"image": 1, "video": 1}, enforce_eager=config.enforce_eager,
                           mm_processor_kwargs=processor_kwargs(self.processor), max_model_len=config.max_model_len)

        @property
        def tokenizer(self):
            return self.llm.get_tokenizer()

        def unfinished_requests(self) -> int:
            return self.llm.llm_engine.get_num_unfinished_requests()

        async def reset_caches(self):
            self.llm.reset_prefix_cache()
            self.llm.reset_mm_cache()

        def next_token_logprobs(self, requests, token_ids):
            sampling = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
            result = np.empty((len(requests), len(token_ids)))
            waves, seen = [], {}
            for i, r in enumerate(requests):  # the first prompt about each media, then the second, ...
                k = seen.get(id(r.media), 0)
                seen[id(r.media)] = k + 1
                if k == len(waves):
                    waves.append([])
                waves[k].append(i)
            for wave in waves:
                prompts = [{"prompt": chat_prompt(self.processor, requests[i]),
                            "multi_modal_data": {requests[i].media.kind: requests[i].media.pixels}} for i in wave]
                for i, out in zip(wave, self.llm.generate(prompts, sampling, use_tqdm=False)):
                    step = out.outputs[0].logprobs[0]
                    result[i] = [step[t].logprob for t in token_ids]
            return result

    return WaveEngine(config)


# --- one configuration, in its own process ----------------------------------------------------


def decoded_batches(work: Path, media: str, n: int, batch_size: int):
    import pyarrow as pa

    from qeval_ray.media import ImageOptions
    from qeval_ray.scorers.qeval import QEvalScorer
    from qeval_ray.stages.decode import DecodeOptions, DecodeStage
    from qeval_ray.testing import synthetic

    rows = []
    for i in range(n):
        if media == "clips":
            path = synthetic.write_video(work / f"clip_{i}.mp4", frames=120, fps=24, width=640, height=360, seed=i)
        else:
            side = 224 if media == "small" else 1024
            path = synthetic.save_image(work / f"img_{i}.png", synthetic.pattern(side, side, i))
        rows.append({"id": f"item-{i:04d}", "uri": str(path), "prompt": synthetic.prompt_for(i)})
    table = pa.Table.from_pylist(rows)
    decode = DecodeStage(DecodeOptions(image=ImageOptions()), QEvalScorer(), table.schema)
    decoded = decode(table)
    return table.schema, [decoded.slice(s, batch_size) for s in range(0, n, batch_size)]


class BusySampler(threading.Thread):
    """Samples the engine's count of unfinished requests every millisecond."""

    def __init__(self, engine):
        super().__init__(daemon=True)
        self.engine, self.samples, self.busy, self.running = engine, 0, 0, True

    def run(self):
        while self.running:
            self.samples += 1
            self.busy += self.engine.unfinished_requests() > 0
            time.sleep(0.001)


def worker(args) -> dict:
    from qeval_ray.contracts.schema import Provenance
    from qeval_ray.engines import load_engine
    from qeval_ray.engines.base import EngineConfig
    from qeval_ray.scorers.qeval import QEvalScorer
    from qeval_ray.stages.score import ScoreStage, ScoringOptions

    work = Path(tempfile.mkdtemp(prefix="qeval-feeding-"))
    schema, batches = decoded_batches(work, args.media, args.items, args.batch_size)
    config = EngineConfig(model=args.model, enforce_eager=True, max_model_len=8192)
    engine = wave_engine(config) if args.setup == "before" else load_engine("vllm", config)
    options = ScoringOptions(engine.name, config, Provenance("bench", "", "", engine.name, "float32", ""))
    stage = ScoreStage(options, QEvalScorer(), schema, engine=engine)
    # The old actor took one batch at a time; the new one holds --in-flight batches.
    in_flight = 1 if args.setup == "before" else args.in_flight

    async def score_all():
        gate = asyncio.Semaphore(in_flight)

        async def one(batch):
            async with gate:
                return await stage(batch)

        await one(batches[0])  # warm-up (first engine steps are slow), not timed
        await engine.reset_caches()
        sampler = BusySampler(engine)
        sampler.start()
        cpu, start = time.process_time(), time.perf_counter()
        outs = await asyncio.gather(*(one(b) for b in batches))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        sampler.running = False
        sampler.join()
        return outs, wall, cpu, sampler.busy / max(sampler.samples, 1)

    outs, wall, cpu, busy = asyncio.run(score_all())
    scores = {r["id"]: [r["quality"], r["alignment"]] for out in outs for r in out.to_pylist()}
    return {"setup": args.setup, "media": args.media, "items": args.items, "wall_s": wall,
            "items_per_s": args.items / wall, "busy_fraction": busy, "actor_cpu_ms_per_item": 1000 * cpu / args.items,
            "scores": scores}


# --- the harness ------------------------------------------------------------------------------


def run_one(model: str, setup: str, media: str, args) -> dict:
    result = Path(tempfile.mkstemp(suffix=".json")[1])
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               # before: the engine core in its own process, as vLLM runs it on GPUs (the new engine's
               # AsyncLLM always has one)
               VLLM_ENABLE_V1_MULTIPROCESSING="1" if setup == "before" else "0")
    cmd = [sys.executable, __file__, "--worker", setup, "--media", media, "--model", model, "--result", str(result),
           "--items", str(args.items if media == "small" else args.cpu_items), "--batch-size", str(args.batch_size),
           "--in-flight", str(args.in_flight)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"setup": setup, "media": media, "failed": proc.stderr[-3000:]}
    return json.loads(result.read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=96, help="224x224 images for the busy fraction")
    parser.add_argument("--cpu-items", type=int, default=16, help="items per media kind for the CPU cost")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight per actor (after)")
    parser.add_argument("--media", default="small,large,clips")
    parser.add_argument("--json", default=None)
    for hidden in ("--worker", "--model", "--result"):
        parser.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.setup = args.worker
        Path(args.result).write_text(json.dumps(worker(args)))
        return

    from qeval_ray.testing import tiny_model

    model = str(tiny_model.build(Path(tempfile.mkdtemp(prefix="qeval-feeding-model-"))))
    runs = []
    for media in args.media.split(","):
        for setup in ("before", "after"):
            runs.append(run_one(model, setup, media, args))
            print(f"  {media} {setup}: done", file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, no GPU", "runs": runs}
    print(f"{'media':<32}{'setup':<8}{'items/s':>9}{'busy':>7}{'actor CPU/item':>16}")
    for r in runs:
        if "failed" in r:
            print(f"{MEDIA[r['media']]:<32}{r['setup']:<8} failed: {r['failed'][-300:]}")
            continue
        print(f"{MEDIA[r['media']]:<32}{r['setup']:<8}{r['items_per_s']:>9.2f}{r['busy_fraction']:>7.2f}"
              f"{r['actor_cpu_ms_per_item']:>13.1f} ms")
    for media in args.media.split(","):
        pair = {r["setup"]: r for r in runs if r["media"] == media and "failed" not in r}
        if len(pair) == 2:
            before, after = pair["before"], pair["after"]
            diff = max(abs(a - b) for k in before["scores"] for a, b in zip(before["scores"][k], after["scores"][k]))
            print(f"  {MEDIA[media]}: after/before items/s {after['items_per_s'] / before['items_per_s']:.2f}, "
                  f"CPU/item {after['actor_cpu_ms_per_item'] / before['actor_cpu_ms_per_item']:.2f}; "
                  f"scores agree to {diff:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
