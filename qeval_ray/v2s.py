"""Vague-to-Specific (V2S): the alignment of a long prompt, scored in parts.

Q-Eval-100K scores the alignment of a long prompt (more than 25 words) in parts: an LLM rewrites
the prompt into one vague summary and several specific sub-prompts, each part is scored with the
same alignment prompt and method as a whole prompt, and the alignment is
``w * vague + (1 - w) * mean(specific)``.

The parts come with the manifest (``v2s_vague``: text, ``v2s_specific``: a list of texts), written
by whichever LLM the user trusts (``jobs/v2s_parts.py`` is one), and pass through to the output, so
every V2S score can be traced to the texts behind it. This module decides which rows are scored in
parts, checks the parts and weighs them; the scorer scores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qeval_ray.contracts.schema import V2S_SPECIFIC, V2S_VAGUE
from qeval_ray.engines.base import forbidden_prompt_text

LONG_PROMPT_WORDS = 25  # the paper's "long prompt": more words than this
DEFAULT_VAGUE_WEIGHT = 0.5
MAX_SPECIFIC = 16  # parts per prompt: each one is a prompt to score (bounds one row's cost)


class V2SError(ValueError):
    """A row's parts cannot be scored; the message says why."""


@dataclass(frozen=True)
class V2SOptions:
    vague_weight: float = DEFAULT_VAGUE_WEIGHT  # the specific parts' mean gets 1 - vague_weight
    min_words: int = LONG_PROMPT_WORDS  # prompts of more words than this are scored in parts


def word_count(prompt: str) -> int:
    return len(prompt.split())


def parts(prompt: str, vague: str | None, specific: list[str] | None, options: V2SOptions) -> list[str] | None:
    """The texts to score for alignment in place of ``prompt`` (vague first), or None where the
    row is scored on its whole prompt: a prompt of ``min_words`` words or fewer, or a row without
    parts. Raises :class:`V2SError` for parts that cannot be scored."""
    if word_count(prompt) <= options.min_words:
        return None
    specific = list(specific or [])
    if vague is None and not specific:
        return None
    if vague is None or not vague.strip():
        raise V2SError(f"{V2S_VAGUE} is empty but {V2S_SPECIFIC} is not: give both V2S parts, or neither")
    if not specific:
        raise V2SError(f"{V2S_SPECIFIC} is empty but {V2S_VAGUE} is not: give both V2S parts, or neither")
    if len(specific) > MAX_SPECIFIC:
        raise V2SError(f"{V2S_SPECIFIC} has {len(specific)} parts; at most {MAX_SPECIFIC} are scored per prompt")
    texts = [vague, *specific]
    for k, text in enumerate(texts):
        name = V2S_VAGUE if k == 0 else f"{V2S_SPECIFIC}[{k - 1}]"
        if text is None or not text.strip():
            raise V2SError(f"{name} is empty")
        bad = forbidden_prompt_text(text)
        if bad:
            raise V2SError(f"{name} contains the model's vision token {bad!r}, which cannot be scored")
    return texts


def weighted(values: np.ndarray, options: V2SOptions) -> np.ndarray:
    """``w * vague + (1 - w) * mean(specific)`` over the first axis (the parts, vague first)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim < 1 or len(values) < 2:
        raise ValueError(f"expected the vague part and at least one specific part, got shape {values.shape}")
    w = options.vague_weight
    return w * values[0] + (1 - w) * values[1:].mean(axis=0)
