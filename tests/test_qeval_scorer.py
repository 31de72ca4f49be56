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


def direct_spread(probabilities) -> np.ndarray:
    """The five-level distribution's standard deviation on the 1-5 scale, computed from scratch."""
    p = np.asarray(probabilities, dtype=float)
    p = p / p.sum(axis=-1, keepdims=True)
    levels = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # Excellent .. Bad
    mean = (p * levels).sum(axis=-1)
    return np.sqrt((p * (levels - mean[..., None]) ** 2).sum(axis=-1))


def test_spread_columns_equal_a_direct_computation():
    from qeval_ray.scorers.qeval import QEvalScorer, probability_columns

    rng = np.random.default_rng(7)
    scorer = QEvalScorer()
    for _ in range(50):
        answers = {"quality": rng.normal(0, 3, (1, 5)), "alignment": rng.normal(0, 3, (1, 5))}
        values = scorer.columns(answers)
        for aspect in ("quality", "alignment"):
            p = [values[c] for c in probability_columns(aspect)]
            assert values[f"{aspect}_std"] == pytest.approx(float(direct_spread(p)), abs=1e-12)
    # The bounds: all mass on one rating, and half on each end of the scale.
    certain = scorer.columns({"quality": np.array([[60.0, 0, 0, 0, 0]])})
    assert certain["quality_std"] == pytest.approx(0.0, abs=1e-9)
    split = scorer.columns({"quality": np.array([[0.0, -80, -80, -80, 0.0]])})
    assert split["quality_std"] == pytest.approx(2.0, abs=1e-9)
    assert {f.name for f in scorer.fields()} >= {"quality_std", "alignment_std"}


def test_spread_of_a_prompt_in_parts_is_that_of_its_combined_probabilities():
    from qeval_ray.scorers.qeval import QEvalScorer, probability_columns
    from qeval_ray.v2s import V2SOptions

    scorer = QEvalScorer(v2s_options=V2SOptions(vague_weight=0.3))
    parts = np.random.default_rng(3).normal(0, 2, (4, 5))  # vague + three specific parts
    values = scorer.columns({"quality": parts[:1], "alignment": parts})
    combined = [values[c] for c in probability_columns("alignment")]
    assert values["alignment_method"] == "v2s"
    assert values["alignment_std"] == pytest.approx(float(direct_spread(combined)), abs=1e-12)
    # ... which is not the mean of the parts' own spreads (the combination is a mixture).
    own = direct_spread(rating_probabilities(parts))
    assert values["alignment_std"] != pytest.approx(0.3 * own[0] + 0.7 * own[1:].mean(), abs=1e-6)
