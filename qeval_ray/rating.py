"""Five rating-token log-probs -> five probabilities -> one score, as the reference's ``wa5``.

The reference reads the next-token logits at the ids of ``Excellent, Good, Fair, Poor, Bad``,
softmaxes over those five alone and dots the result with ``[1, .75, .5, .25, 0]``. Engines hand us
full-vocabulary log-probs (vLLM) or raw logits (HF); a softmax over five values is unchanged by a
shift common to all five, so both give the same probabilities.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qeval_ray.prompts import RATING_TOKENS, RATING_WEIGHTS

_WEIGHTS = np.asarray(RATING_WEIGHTS, dtype=np.float64)


def rating_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the five rating tokens), in float64 and numerically stable."""
    x = np.asarray(logits, dtype=np.float64)
    if x.shape[-1] != len(RATING_TOKENS):
        raise ValueError(f"expected {len(RATING_TOKENS)} rating logits, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"rating logits are not finite: {x.tolist()}")
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def score_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """Expected rating in [0, 1]: probabilities dotted with the rating weights."""
    return np.asarray(probs, dtype=np.float64) @ _WEIGHTS


def to_mos_scale(score: np.ndarray | float) -> np.ndarray | float:
    """[0, 1] -> the 1-5 MOS scale of the Q-Eval-100K labels."""
    return 1.0 + 4.0 * score


def rating_token_ids(tokenizer) -> list[int]:
    """First sub-token id of each rating word, computed as the reference does.

    The reference calls ``tokenizer(["Good", "Poor", ...])["input_ids"]`` and keeps ``[0]`` of each:
    capitalised words with no leading space, special tokens left to the tokenizer's default.
    """
    ids = tokenizer(list(RATING_TOKENS))["input_ids"]
    return [int(seq[0]) for seq in ids]


def check_distinct(token_ids: Sequence[int]) -> None:
    """Two rating words sharing a first sub-token would make the softmax meaningless."""
    if len(set(token_ids)) != len(token_ids):
        pairs = dict(zip(RATING_TOKENS, token_ids))
        raise ValueError(f"rating tokens do not map to distinct ids: {pairs}")
