"""The Q-Eval-Score scorer: five logits -> probabilities -> score, exactly as the reference's wa5;
the tokens it reads; the prompts it asks and the columns its answers become."""

import numpy as np
import pytest

from qeval_ray.engines.base import first_token_ids
from qeval_ray.scorers.qeval import RATING_TOKENS, rating_probabilities, score_from_probabilities


def reference_wa5(logits: dict) -> float:
    """The reference's function, restated: exp / sum over the five, dotted with the weights."""
    lp = np.array([logits["Excellent"], logits["Good"], logits["Fair"], logits["Poor"], logits["Bad"]])
    probs = np.exp(lp) / np.sum(np.exp(lp))
    return float(np.inner(probs, np.array([1, 0.75, 0.5, 0.25, 0.0])))


def test_known_logits():
    p = rating_probabilities([0.0, 0.0, 0.0, 0.0, 0.0])
    assert np.allclose(p, 0.2) and score_from_probabilities(p) == pytest.approx(0.5)
    p = rating_probabilities([50.0, 0.0, 0.0, 0.0, 0.0])
    assert score_from_probabilities(p) == pytest.approx(1.0)
    p = rating_probabilities([np.log(3), 0.0, 0.0, 0.0, 0.0])  # odds 3:1:1:1:1
    assert np.allclose(p, [3 / 7, 1 / 7, 1 / 7, 1 / 7, 1 / 7])
    assert score_from_probabilities(p) == pytest.approx((3 + 0.75 + 0.5 + 0.25) / 7)


def test_matches_reference_on_random_logits():
    rng = np.random.default_rng(0)
    for _ in range(100):
        x = rng.normal(0, 5, 5)
        ref = reference_wa5(dict(zip(["Excellent", "Good", "Fair", "Poor", "Bad"], x)))
        assert score_from_probabilities(rating_probabilities(x)) == pytest.approx(ref, abs=1e-12)


def test_logprobs_and_logits_give_the_same_score():
    # vLLM returns log-softmax over the vocabulary; HF raw logits. A common shift cancels.
    x = np.array([1.5, -0.2, 3.0, 0.1, -4.0])
    assert np.allclose(rating_probabilities(x), rating_probabilities(x - 17.3))


def test_large_logits_are_stable_and_bad_ones_refused():
    assert np.isfinite(rating_probabilities([1e4, 1e4 - 1, 0, 0, 0])).all()
    with pytest.raises(ValueError):
        rating_probabilities([np.nan, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        rating_probabilities([0, 0, 0, 0])


def test_batched_shape():
    x = np.random.default_rng(1).normal(size=(7, 5))
    assert rating_probabilities(x).shape == (7, 5)


def test_rating_token_ids_follow_the_reference(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = first_token_ids(tok, RATING_TOKENS)
    # The reference: tokenizer(["Good", "Poor", ...])["input_ids"], first id of each.
    assert ids == [tok(w)["input_ids"][0] for w in ["Excellent", "Good", "Fair", "Poor", "Bad"]]
    assert [tok.decode([i]) for i in ids] == ["Excellent", "Good", "Fair", "Poor", "Bad"]
