"""The stages without Ray: rows in = rows out, the decode stage's statuses, the score stage's
bisection of failing items and its crash accounting, and the plan check (a fake engine; no Ray)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import numpy as np
import pyarrow as pa
import pytest

from qeval_ray.contracts.schema import Provenance
from qeval_ray.engines.base import Engine, EngineConfig
from qeval_ray.scorers.qeval import QEvalScorer
from qeval_ray.stages.base import PlanError, RowAccountingError, Stage, StageSpec, check_plan
from qeval_ray.stages.crash_ledger import CrashLedger
from qeval_ray.stages.decode import DecodeOptions, DecodeStage, decode_stage
from qeval_ray.stages.score import ScoreStage, ScoringOptions, score_stage
from qeval_ray.testing import synthetic

# --- rows in = rows out ----------------------------------------------------------------------------


class _Drop(Stage):
    def process(self, batch):
        return batch.slice(1)


class _Duplicate(Stage):
    def process(self, batch):
        return pa.concat_tables([batch.slice(0, 1), batch.slice(0, batch.num_rows - 1)])


class _Keep(Stage):
    def process(self, batch):
        return batch.append_column("x", pa.array(range(batch.num_rows)))


BATCH = pa.table({"id": ["a", "b", "c"], "status": ["ok"] * 3})


@pytest.mark.parametrize("stage", [_Drop(), _Duplicate()])
def test_lost_or_duplicated_rows_are_caught(stage):
    with pytest.raises(RowAccountingError):
        stage(BATCH)


def test_a_well_behaved_stage_passes():
    assert _Keep()(BATCH).column("x").to_pylist() == [0, 1, 2]


# --- decode ----------------------------------------------------------------------------------------

MANIFEST = pa.schema([("id", pa.string()), ("uri", pa.string()), ("prompt", pa.string()),
                      ("media_type", pa.string())])


def _decoded(tmp_path, rows, scorer=QEvalScorer()):
    synthetic.save_image(tmp_path / "img.png", synthetic.pattern(60, 90, 1))
    batch = pa.Table.from_pylist([{"media_type": None, **r} for r in rows], schema=MANIFEST)
    return DecodeStage(DecodeOptions(base_dir=str(tmp_path)), scorer, MANIFEST)(batch)


def test_decode_stage_sets_a_status_and_reason_on_every_row(tmp_path):
    out = _decoded(tmp_path, [
        {"id": "good", "uri": "img.png", "prompt": "p"},
        {"id": "missing", "uri": "nope.png", "prompt": "p"},
        {"id": "no-uri", "uri": "", "prompt": "p"},
        {"id": "no-prompt", "uri": "img.png", "prompt": None},
        {"id": "odd-type", "uri": "img.png", "prompt": "p", "media_type": "audio"},
        {"id": "no-extension", "uri": "img.bin", "prompt": "p"},
    ]).to_pylist()
    assert [r["status"] for r in out] == ["ok", "fetch_error", "invalid_row", "invalid_row", "invalid_row",
                                          "invalid_row"]
    assert out[0]["error"] is None and (out[0]["media_height"], out[0]["media_width"]) == (56, 84)
    assert all(r["error"] for r in out[1:]) and all(r["_pixels"] is None for r in out[1:])
    assert "not found" in out[1]["error"] and "prompt is empty" in out[3]["error"]


def test_a_row_the_scorer_refuses_is_never_fetched(tmp_path):
    # The uri does not exist: a fetch would say fetch_error. The scorer refuses first.
    out = _decoded(tmp_path, [{"id": "v", "uri": "nope.png", "prompt": "a <|image_pad|> prompt"}]).to_pylist()
    assert out[0]["status"] == "invalid_row" and "vision token" in out[0]["error"]


# --- score: bisection and crash accounting, on a fake engine --------------------------------------


class FakeEngine(Engine):
    """Log-probs from a hash of the pixels and the text; fails on any request mentioning POISON."""

    name = "fake"

    def __init__(self):
        super().__init__(EngineConfig(model="fake"))
        self.calls: list[int] = []

    @property
    def tokenizer(self):
        return lambda words: {"input_ids": [[100 + i] for i in range(len(words))]}

    def next_token_logprobs(self, requests, token_ids):
        self.calls.append(len(requests))
        if any("POISON" in r.text for r in requests):
            raise RuntimeError("the engine chokes on this item")
        out = []
        for r in requests:
            seed = hashlib.sha256(r.media.pixels.tobytes() + r.text.encode()).digest()
            out.append(np.random.default_rng(list(seed[:8])).normal(size=len(token_ids)) - 3)
        return np.array(out)


PROVENANCE = Provenance("fake", "r", "v", "fake", "float32", "test")


def _batch(tmp_path, prompts):
    rows = [{"id": f"i{k}", "uri": "img.png", "prompt": p} for k, p in enumerate(prompts)]
    return _decoded(tmp_path, rows)


def _stage(engine, ledger=None, max_crashes=3):
    options = ScoringOptions("fake", EngineConfig(model="fake"), PROVENANCE, crash_ledger=ledger,
                             max_crashes=max_crashes)
    return ScoreStage(options, QEvalScorer(), MANIFEST, engine=engine)


def test_failing_items_are_narrowed_down_and_the_rest_scored(tmp_path):
    prompts = [f"a picture {k}" for k in range(16)]
    prompts[5] = prompts[11] = "POISON"
    batch = _batch(tmp_path, prompts)
    engine = FakeEngine()
    out = _score(_stage(engine), batch).to_pylist()
    failed = [r["id"] for r in out if r["status"] == "score_error"]
    assert failed == ["i5", "i11"] and all("chokes" in r["error"] for r in out if r["id"] in failed)
    assert all(r["quality"] is not None and r["alignment"] is not None for r in out if r["status"] == "ok")
    assert len(engine.calls) <= 1 + 2 * 2 * 4  # O(poisoned x log batch), not one call per item
    # Every other item scored exactly as it is alone.
    alone = _score(_stage(FakeEngine()), _batch(tmp_path, [prompts[0]])).to_pylist()[0]
    assert (out[0]["quality"], out[0]["alignment"]) == (alone["quality"], alone["alignment"])


def test_a_batch_that_crashed_an_actor_is_retried_item_by_item(tmp_path):
    batch = _batch(tmp_path, ["one", "two", "three"])
    ledger, engine = CrashLedger(), FakeEngine()
    first = _score(_stage(engine, ledger), batch)  # scored as one call; the ledger's batch is finished
    assert engine.calls == [6] and ledger.inflight == {} and not ledger.crashes
    # Now pretend an actor died mid-batch: the batch is in the engine when it starts again.
    ledger.start(_key(batch), ["i0", "i1", "i2"])
    ledger.narrow(_key(batch), ["i0", "i1", "i2"])
    engine = FakeEngine()
    again = _score(_stage(engine, ledger), batch)
    assert engine.calls == [2, 2, 2] and ledger.events == 1  # one item at a time, each item charged once
    assert again.column("quality").to_pylist() == first.column("quality").to_pylist()


def test_an_item_that_keeps_crashing_becomes_an_error_row(tmp_path):
    batch = _batch(tmp_path, ["one", "two", "three"])
    ledger = CrashLedger()
    for _ in range(2):  # two deaths while i1 alone was in flight
        ledger.start(_key(batch), ["i0", "i1", "i2"])
        ledger.narrow(_key(batch), ["i1"])
    engine = FakeEngine()
    out = _score(_stage(engine, ledger, max_crashes=2), batch).to_pylist()
    assert [r["status"] for r in out] == ["ok", "score_error", "ok"]
    assert "crashed the scoring engine 2 times" in out[1]["error"]
    assert engine.calls == [2, 2]  # the culprit was not tried again


class FakeConcurrentEngine(FakeEngine):
    """Fed item by item, many at once (as vLLM's AsyncLLM): records how many items were in flight."""

    concurrent = True

    def __init__(self):
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    async def item_logprobs(self, requests, token_ids):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # the engine works; other items enter meanwhile
            return self.next_token_logprobs(requests, token_ids)
        finally:
            self.in_flight -= 1


def test_a_concurrent_engine_gets_every_item_at_once_and_each_fails_alone(tmp_path):
    prompts = [f"a picture {k}" for k in range(8)]
    prompts[3] = "POISON"
    batch = _batch(tmp_path, prompts)
    engine = FakeConcurrentEngine()
    out = _score(_stage(engine), batch).to_pylist()
    assert [r["status"] for r in out] == ["ok"] * 3 + ["score_error"] + ["ok"] * 4
    assert engine.most_in_flight == 8 and engine.calls == [2] * 8  # all at once; one call per item, no bisection
    batch_engine = _score(_stage(FakeEngine()), batch).to_pylist()
    assert [r["quality"] for r in out] == [r["quality"] for r in batch_engine]  # the same scores


def test_batches_in_flight_share_one_concurrent_engine(tmp_path):
    stage = _stage(FakeConcurrentEngine())
    engine = stage.engine
    batches = [_batch(tmp_path, [f"batch {b} item {k}" for k in range(4)]) for b in range(3)]

    async def three_at_once():
        return await asyncio.gather(*(stage(b) for b in batches))

    outs = asyncio.run(three_at_once())
    assert engine.most_in_flight == 12  # the next batch's items enter before the current drains
    assert [o.column("id").to_pylist() for o in outs] == [b.column("id").to_pylist() for b in batches]


def test_a_batch_that_crashed_an_actor_runs_alone_so_its_neighbours_are_not_charged(tmp_path):
    """A crash while a suspect item is in the engine must charge that item only: the other batches
    of the actor are neither in the engine with it nor registered as being there."""
    ledger, engine = CrashLedger(), FakeConcurrentEngine()
    stage = _stage(engine, ledger)
    batches = [_batch(tmp_path, [f"batch {b} item {k}" for k in range(4)]) for b in range(3)]
    batches = [b.set_column(b.column_names.index("id"), "id", pa.array([f"b{n}-{i}" for i in b.column("id").to_pylist()]))
               for n, b in enumerate(batches)]  # a batch's key is its ids
    suspect = batches[1]
    ledger.start(_key(suspect), [])
    ledger.narrow(_key(suspect), suspect.column("id").to_pylist())  # it was in an actor that died
    seen = []  # (suspect?, items in the engine, items the ledger holds in the engine) as each enters
    score_one = engine.item_logprobs

    async def watched(requests, token_ids):
        in_ledger = sum(len(ids) for ids in ledger.inflight.values())
        seen.append(("batch 1" in requests[0].text, engine.in_flight, in_ledger))
        return await score_one(requests, token_ids)

    engine.item_logprobs = watched

    async def three_at_once():
        return await asyncio.gather(*(stage(b) for b in batches))

    outs = asyncio.run(three_at_once())
    assert all(set(o.column("status").to_pylist()) == {"ok"} for o in outs) and ledger.inflight == {}
    assert len(seen) == 12
    # The suspect's items entered an idle engine one by one, each the only item the ledger holds.
    assert [(in_engine, in_ledger) for suspect, in_engine, in_ledger in seen if suspect] == [(0, 1)] * 4
    assert engine.most_in_flight == 4  # the healthy batches still send all their items at once


DEAD_ENGINE_ACTOR = """
import sys, time
sys.path.insert(0, sys.argv[1])
import test_stages as t
from qeval_ray.stages.score import ScoreStage

class DeadEngine(t.FakeEngine):
    def is_dead(self):
        return time.monotonic() > dies_at

ScoreStage.WATCHDOG_INTERVAL_S, ScoreStage.DEAD_ENGINE_GRACE_S = 0.1, 1.0
dies_at = time.monotonic() + 0.5
stage = t._stage(DeadEngine())
time.sleep(30)  # requests hanging in a dead engine
"""


def test_an_engine_whose_processes_die_ends_its_actor_even_if_its_requests_hang():
    import subprocess
    import sys
    from pathlib import Path

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DEAD_ENGINE_ACTOR, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 70, proc.stderr[-2000:]
    assert "ending this actor" in proc.stderr
    assert time.monotonic() - started < 25  # ended by the watchdog, not by the sleep running out


def test_the_media_digest_is_the_pixels_digest_whatever_the_uri(tmp_path):
    import shutil

    from qeval_ray import media

    synthetic.save_image(tmp_path / "img.png", synthetic.pattern(60, 90, 1))
    shutil.copy(tmp_path / "img.png", tmp_path / "copy.png")
    synthetic.save_image(tmp_path / "other.png", synthetic.pattern(60, 90, 2))
    batch = pa.Table.from_pylist([{"id": i, "uri": u, "prompt": "p", "media_type": None} for i, u in
                                  [("a", "img.png"), ("b", "copy.png"), ("c", "other.png")]], schema=MANIFEST)
    out = DecodeStage(DecodeOptions(base_dir=str(tmp_path)), QEvalScorer(), MANIFEST)(batch).to_pylist()
    pixels = media.decode_image((tmp_path / "img.png").read_bytes(), DecodeOptions().image)
    expected = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    assert out[0]["media_digest"] == out[1]["media_digest"] == expected
    assert out[2]["media_digest"] != expected


def _score(stage, batch):
    return asyncio.run(stage(batch))


def _key(batch):
    ids = sorted(i for i, ok in zip(batch.column("id").to_pylist(), batch.column("status").to_pylist()) if ok == "ok")
    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


# --- the plan --------------------------------------------------------------------------------------


def test_the_score_job_plan_provides_every_column_a_stage_needs():
    from qeval_ray.stages.base import Resources

    scorer = QEvalScorer()
    options = ScoringOptions("hf", EngineConfig(model="m"), PROVENANCE)
    stages = [decode_stage(DecodeOptions(), scorer, MANIFEST, batch_size=4),
              score_stage(options, scorer, MANIFEST, actors=1, batch_size=8, resources=Resources())]
    check_plan(stages, MANIFEST.names)
    with pytest.raises(PlanError, match="'score' needs status, media_digest, _pixels, _pixels_shape"):
        check_plan(stages[1:], MANIFEST.names)
    assert stages[0].actors is None and stages[1].actors == 1


def test_v2s_columns_are_needed_only_with_v2s():
    from qeval_ray.v2s import V2SOptions

    spec = decode_stage(DecodeOptions(), QEvalScorer(v2s_options=V2SOptions()), MANIFEST, batch_size=4)
    with pytest.raises(PlanError, match="v2s_vague, v2s_specific"):
        check_plan([spec], MANIFEST.names)
    assert isinstance(spec, StageSpec)


@pytest.mark.slow  # Ray plans the dataset
def test_decoding_is_never_fused_into_the_scoring_actors(ray_local, capsys):
    """With one CPU per scoring actor and no GPU, Ray Data would run decoding inside the actor."""
    import dataclasses

    import ray.data

    from qeval_ray.stages.base import Resources

    scorer = QEvalScorer()
    decode = decode_stage(DecodeOptions(), scorer, MANIFEST, batch_size=4)
    score = score_stage(ScoringOptions("hf", EngineConfig(model="m"), PROVENANCE), scorer, MANIFEST, actors=1,
                        batch_size=8, resources=Resources(cpus=1))

    def physical_plan(stages):
        ds = ray.data.from_items([{"id": "a", "uri": "a.png", "prompt": "p", "media_type": None}])
        for stage in stages:
            ds = stage.apply(ds)
        ds.explain()
        return capsys.readouterr().out.split("Physical Plan (Optimized)")[1]

    plan = physical_plan([decode, score])
    assert "TaskPoolMapOperator[MapBatches(DecodeStage)]" in plan
    assert "ActorPoolMapOperator[MapBatches(ScoreStage)]" in plan
    # Asking for the same resources, Ray Data fuses them: the check above can fail.
    fused = physical_plan([dataclasses.replace(decode, resources=score.resources), score])
    assert "MapBatches(DecodeStage)->MapBatches(ScoreStage)" in fused
