"""Scores against the reference's own stack, transformers 4.46.0, from a committed fixture.

``tests/fixtures/tf446_logprobs.json`` holds 4.46.0's rating log-probs for a few generated items
(written by ``make parity``, which installs 4.46.0 aside; these tests need no network). The items'
media are regenerated here from their seeds. 4.46.0's forward without ``position_ids`` (what the
reference's ``infer.py`` calls) gives flat positions; with its ``get_rope_index`` positions it
gives M-RoPE, as the model was trained and as this job computes by default.
"""

import json

import numpy as np
import pytest

from qeval_ray.config import ConfigError, ScoreConfig
from qeval_ray.engines.base import EngineConfig
from qeval_ray.engines.hf import flat_position_ids
from qeval_ray.scorers.qeval import RATING_TOKENS, rating_probabilities, score_from_probabilities
from qeval_ray.testing import parity

# Measured by scripts/parity.py (float32, CPU): the job's HF engine against 4.46.0 differs by at
# most 1.2e-6 in a log-prob, against 1e-3 to 5e-2 between flat and M-RoPE positions.
LOGPROB_TOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    return json.loads(parity.FIXTURE.read_text())


def test_fixture_describes_generated_items_of_the_reference_stack(fixture):
    assert fixture["stack"]["transformers"] == "4.46.0"
    by_id = {item.id: item for item in parity.ITEMS}
    assert [r["id"] for r in fixture["items"]] == [i for i in parity.FIXTURE_ITEMS]
    for record in fixture["items"]:
        item = by_id[record["id"]]
        assert {k: record[k] for k in ("kind", "seed", "width", "height", "aspect", "frames", "fps", "codec")} == \
            {k: getattr(item, k) for k in ("kind", "seed", "width", "height", "aspect", "frames", "fps", "codec")}
        assert np.all(np.isfinite(record["tf446"])) and len(record["tf446"]) == len(RATING_TOKENS)
    # The two position rules give different numbers on every clip: the comparisons below can tell them apart.
    clips = [r for r in fixture["items"] if r["kind"] == "video"]
    assert clips and all(np.abs(np.subtract(r["tf446"], r["tf446_rope"])).max() > 1e-3 for r in clips)


def test_flat_positions_count_each_row_from_its_first_token():
    import torch

    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = flat_position_ids(mask)
    assert pos.shape == (3, 2, 5)
    assert pos[:, 0, 2:].tolist() == [[0, 1, 2]] * 3 and pos[:, 1].tolist() == [[0, 1, 2, 3, 4]] * 3


def _config(**kw):
    return ScoreConfig(input="in.parquet", output="out", **kw)


def test_rope_positions_option():
    from qeval_ray.provenance import engine_config, engine_label, score_settings

    class Manifest:
        ids_digest = "x"

    assert _config(engine="hf").rope_positions == "mrope"
    flat = _config(engine="hf", rope_positions="flat").validate()
    assert engine_config(flat, 0).rope_positions == "flat"
    # Only a non-default choice enters the fingerprint: default runs keep the fingerprint they had.
    assert "rope_positions" not in score_settings(_config(engine="hf"), Manifest())
    assert score_settings(flat, Manifest())["rope_positions"] == "flat"
    assert engine_label("hf", "mrope") == "hf" and engine_label("hf", "flat") == "hf+flat-rope"
    with pytest.raises(ConfigError, match="--rope-positions flat .* HF engine only.*--engine hf"):
        _config(engine="vllm", rope_positions="flat").validate()
    with pytest.raises(ConfigError, match="--rope-positions 'flta': choose one of mrope, flat"):
        _config(engine="hf", rope_positions="flta").validate()


@pytest.mark.slow  # builds HF engines
def test_hf_engine_equals_transformers_446(fixture, tiny_model):
    from qeval_ray.engines import load_engine

    assert parity.model_digest(tiny_model) == fixture["model_digest"], \
        "the tiny model changed: regenerate the fixture with `make parity`"
    by_id = {item.id: item for item in parity.ITEMS}
    requests = [parity.item_request(by_id[r["id"]]) for r in fixture["items"]]
    ref = {key: np.array([r[key] for r in fixture["items"]]) for key in ("tf446", "tf446_rope")}
    ours = {}
    for mode in ("flat", "mrope"):
        engine = load_engine("hf", EngineConfig(model=tiny_model, rope_positions=mode))
        ours[mode] = engine.next_token_logprobs(requests, engine.token_ids(RATING_TOKENS))  # batched, left-padded
    # --rope-positions flat is the reference's infer.py under 4.46.0; the default is 4.46 with M-RoPE.
    assert np.abs(ours["flat"] - ref["tf446"]).max() < LOGPROB_TOL
    assert np.abs(ours["mrope"] - ref["tf446_rope"]).max() < LOGPROB_TOL
    # ... and the default is not the literal reference (the difference the README states).
    scores = {k: score_from_probabilities(rating_probabilities(v)) for k, v in {**ours, **ref}.items()}
    assert np.abs(scores["flat"] - scores["tf446"]).max() < 1e-6
    assert np.abs(scores["mrope"] - scores["tf446"]).max() > 1e-3
