"""Vague-to-Specific: which rows are scored in parts, the parts' checks, and the combined score equal
to the parts scored as prompts of their own, through the real decode and score stages and the job."""

import asyncio
import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import SMALL, assert_probabilities, read_scores
from qeval_ray.testing import synthetic
from qeval_ray.scorers.qeval import combine_parts as combine
from qeval_ray.v2s import MAX_SPECIFIC, V2SError, V2SOptions, parts

LONG = ("a weathered lighthouse on a basalt cliff at dusk, waves breaking on the rocks below, a red fishing boat "
        "rounding the point, gulls circling the lamp, and storm clouds gathering over the distant hills")
VAGUE = "a lighthouse on a cliff by the sea at dusk"
SPECIFIC = ["a red fishing boat near the rocks", "gulls circling a lighthouse lamp", "storm clouds over hills"]
OPTIONS = V2SOptions()


# --- which rows, which parts --------------------------------------------------------------------


def test_long_prompts_with_parts_are_scored_in_parts():
    assert len(LONG.split()) > 25
    assert parts(LONG, VAGUE, SPECIFIC, OPTIONS) == [VAGUE, *SPECIFIC]


def test_short_prompts_and_rows_without_parts_are_scored_whole():
    short = " ".join(LONG.split()[:25])  # 25 words: not more than 25
    assert parts(short, VAGUE, SPECIFIC, OPTIONS) is None
    assert parts(short, VAGUE, SPECIFIC, V2SOptions(min_words=24)) == [VAGUE, *SPECIFIC]
    assert parts(LONG, None, None, OPTIONS) is None
    assert parts(LONG, None, [], OPTIONS) is None


@pytest.mark.parametrize("vague, specific, message", [
    ("", SPECIFIC, "v2s_vague is empty but v2s_specific is not"),
    (None, SPECIFIC, "v2s_vague is empty but v2s_specific is not"),
    (VAGUE, [], "v2s_specific is empty but v2s_vague is not"),
    (VAGUE, ["fine", "  "], r"v2s_specific\[1\] is empty"),
    (VAGUE, ["a <|video_pad|> part"], r"v2s_specific\[0\] contains the model's vision token"),
    (VAGUE, ["part"] * (MAX_SPECIFIC + 1), f"has {MAX_SPECIFIC + 1} parts; at most {MAX_SPECIFIC}"),
])
def test_parts_that_cannot_be_scored_are_refused(vague, specific, message):
    with pytest.raises(V2SError, match=message):
        parts(LONG, vague, specific, OPTIONS)


def test_combination_weights_probabilities_as_scores():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=4)  # vague + 3 specific
    weights = np.array([1, 0.75, 0.5, 0.25, 0])
    for w in (0.0, 0.3, 0.5, 1.0):
        c = combine(p, V2SOptions(vague_weight=w))
        scores = p @ weights
        assert c.vague == pytest.approx(scores[0]) and c.specific == pytest.approx(list(scores[1:]))
        assert c.probabilities.sum() == pytest.approx(1.0)
        assert c.probabilities @ weights == pytest.approx(w * scores[0] + (1 - w) * scores[1:].mean())
    with pytest.raises(ValueError, match="at least one specific part"):
        combine(p[:1], OPTIONS)


# --- the stages ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2s_media")
    synthetic.save_image(root / "a.png", synthetic.pattern(200, 260, 11))
    return root


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    from qeval_ray.engines import load_engine
    from qeval_ray.engines.base import EngineConfig

    return load_engine("hf", EngineConfig(model=tiny_model))


def _score(rows, image_dir, engine, options):
    """Rows through the real decode and score stages (one batch), as the job runs them."""
    from qeval_ray.contracts.schema import Provenance
    from qeval_ray.engines.base import EngineConfig
    from qeval_ray.media import ImageOptions
    from qeval_ray.scorers.qeval import QEvalScorer
    from qeval_ray.stages.decode import DecodeOptions, DecodeStage
    from qeval_ray.stages.score import ScoreStage, ScoringOptions

    rows = [{"uri": "a.png", "v2s_vague": None, "v2s_specific": None, **r} for r in rows]
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.string()), ("uri", pa.string()), ("prompt", pa.string()),
        ("v2s_vague", pa.string()), ("v2s_specific", pa.list_(pa.string()))]))
    scorer = QEvalScorer(v2s_options=options)
    decode = DecodeStage(DecodeOptions(image=ImageOptions(max_pixels=64 * 28 * 28), base_dir=str(image_dir)),
                         scorer, table.schema)
    provenance = Provenance("tiny", "r", "v", "hf", "float32", "test")
    score = ScoreStage(ScoringOptions("hf", EngineConfig(model="unused"), provenance), scorer, table.schema,
                       engine=engine)
    out = asyncio.run(score(decode(table)))
    return {r["id"]: r for r in out.to_pylist()}, out


@pytest.mark.slow  # an engine
def test_a_long_prompt_scores_as_its_parts_scored_alone(hf_engine, image_dir):
    rows = [
        {"id": "long", "prompt": LONG, "v2s_vague": VAGUE, "v2s_specific": SPECIFIC},
        {"id": "long-whole", "prompt": LONG},  # no parts: scored on the whole prompt
        {"id": "short", "prompt": "a lighthouse", "v2s_vague": VAGUE, "v2s_specific": SPECIFIC},
        {"id": "vague", "prompt": VAGUE},
        *({"id": f"specific-{k}", "prompt": text} for k, text in enumerate(SPECIFIC)),
        {"id": "half", "prompt": LONG, "v2s_vague": VAGUE, "v2s_specific": []},
        {"id": "token", "prompt": LONG, "v2s_vague": "a <|image_pad|>", "v2s_specific": SPECIFIC},
    ]
    got, table = _score(rows, image_dir, hf_engine, OPTIONS)
    long = got["long"]
    assert long["status"] == "ok" and long["alignment_method"] == "v2s"
    alone = [got["vague"]["alignment"]] + [got[f"specific-{k}"]["alignment"] for k in range(len(SPECIFIC))]
    assert long["alignment_vague"] == pytest.approx(alone[0], abs=1e-6)
    assert long["alignment_specific"] == pytest.approx(alone[1:], abs=1e-6)
    assert long["alignment"] == pytest.approx(0.5 * alone[0] + 0.5 * np.mean(alone[1:]), abs=1e-6)
    # the whole prompt rates differently; quality always quotes the whole prompt
    assert abs(long["alignment"] - got["long-whole"]["alignment"]) > 1e-4
    assert long["quality"] == pytest.approx(got["long-whole"]["quality"], abs=1e-6)
    for name in ("long-whole", "short", "vague"):
        assert got[name]["alignment_method"] == "direct" and got[name]["alignment_vague"] is None
    assert got["short"]["alignment"] == pytest.approx(
        _score([{"id": "s", "prompt": "a lighthouse"}], image_dir, hf_engine, None)[0]["s"]["alignment"], abs=1e-6)
    for name, reason in (("half", "V2S parts: v2s_specific is empty"), ("token", "V2S parts: v2s_vague contains")):
        assert got[name]["status"] == "invalid_row" and got[name]["error"].startswith(reason), got[name]
        assert got[name]["alignment"] is None and got[name]["media_height"] is None  # refused before the fetch
    assert_probabilities(table.filter(pa.compute.equal(table.column("status"), "ok")), "alignment")

    weighted, _ = _score(rows[:1], image_dir, hf_engine, V2SOptions(vague_weight=1.0))
    assert weighted["long"]["alignment"] == pytest.approx(alone[0], abs=1e-6)


# --- the job ------------------------------------------------------------------------------------


def _manifest(tmp_path, image_dir, fmt="jsonl"):
    rows = [
        {"id": "long", "uri": str(image_dir / "a.png"), "prompt": LONG, "v2s_vague": VAGUE, "v2s_specific": SPECIFIC},
        {"id": "short", "uri": str(image_dir / "a.png"), "prompt": "a lighthouse"},
        {"id": "half", "uri": str(image_dir / "a.png"), "prompt": LONG, "v2s_vague": VAGUE, "v2s_specific": []},
    ]
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("id,uri,prompt,v2s_vague,v2s_specific\nx,a.png,p,v,\"[\"\"s\"\"]\"\n")
    return path


def test_v2s_options_and_manifests_are_checked_before_work(tmp_path, image_dir, tiny_model):
    from qeval_ray.config import ConfigError, parse_score_args
    from qeval_ray.stages.read import ManifestError
    from qeval_ray.pipeline import run_score_job as run

    base = ["--input", str(_manifest(tmp_path, image_dir)), "--output", str(tmp_path / "out"),
            "--model", tiny_model, "--engine", "hf"]
    with pytest.raises(ConfigError, match=r"--v2s-vague-weight must be in \[0, 1\]"):
        parse_score_args(base + ["--v2s", "--v2s-vague-weight", "1.5"])
    with pytest.raises(ConfigError, match="--v2s scores alignment in parts: it needs alignment in --aspects"):
        parse_score_args(base + ["--v2s", "--aspects", "quality"])
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "a", "uri": str(image_dir / "a.png"), "prompt": LONG}) + "\n")
    with pytest.raises(ManifestError, match="has no 'v2s_vague' or 'v2s_specific'"):
        run(parse_score_args(["--input", str(plain), *base[2:], "--v2s"]))
    with pytest.raises(ManifestError, match="CSV cannot carry"):
        run(parse_score_args(["--input", str(_manifest(tmp_path, image_dir, "csv")), *base[2:]]))
    assert not (tmp_path / "out").exists()  # nothing was started


@pytest.mark.slow  # Ray and an engine
def test_the_job_scores_long_prompts_in_parts_and_keeps_them(tmp_path, image_dir, tiny_model, ray_local):
    from qeval_ray.config import parse_score_args
    from qeval_ray.contracts.layout import RunMismatch
    from qeval_ray.pipeline import run_score_job as run

    args = ["--input", str(_manifest(tmp_path, image_dir)), "--output", str(tmp_path / "out"),
            "--model", tiny_model, "--engine", "hf", "--num-cpus-per-actor", "0.5", *SMALL, "--v2s"]
    summary = run(parse_score_args(args))
    rows = {r["id"]: r for r in read_scores(tmp_path / "out").to_pylist()}
    assert summary.rows_out == 3 and summary.alignment_in_parts == 1
    assert "1 long prompt(s) scored in V2S parts" in summary.format()
    assert rows["long"]["alignment_method"] == "v2s" and len(rows["long"]["alignment_specific"]) == 3
    assert rows["long"]["v2s_vague"] == VAGUE and rows["long"]["v2s_specific"] == SPECIFIC  # the parts, kept
    assert rows["short"]["alignment_method"] == "direct"
    assert rows["half"]["status"] == "invalid_row" and "V2S parts" in rows["half"]["error"]
    with pytest.raises(RunMismatch, match="v2s"):
        run(parse_score_args(args + ["--v2s-vague-weight", "0.7"]))
    with pytest.raises(RunMismatch, match="v2s"):
        run(parse_score_args(args[:-1]))  # the same output scored without V2S is another run
