"""Q-Eval-Score: the released model's prompts, the rating tokens it reads, and how they become scores.

Everything here is the Q-Eval-100K reference (``utils/infer.py``): the four context prompts
verbatim (each starts with a literal ``<image>``/``<video>`` string the model was trained on;
``{prompt}`` is the item's own text prompt), the next-token log-probs of ``Excellent, Good, Fair,
Poor, Bad`` softmaxed over those five alone (the reference's ``wa5``) and dotted with
``[1, .75, .5, .25, 0]``. Change a prompt only together with ``PROMPT_VERSION``: scores made with
different prompts are not comparable.

Long prompts' alignment may be scored from Vague-to-Specific parts (:mod:`qeval_ray.v2s`): each
part is scored as a whole prompt would be, and the parts' probabilities are combined with the same
weights as their scores, so ``alignment`` stays the probabilities dotted with the rating weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Mapping

import numpy as np
import pyarrow as pa

from qeval_ray import v2s
from qeval_ray.contracts.schema import PROMPT, V2S_SPECIFIC, V2S_VAGUE
from qeval_ray.engines.base import forbidden_prompt_text
from qeval_ray.scorers.base import Scorer

PROMPT_VERSION: Final = "qeval100k-v1"

ASPECTS: Final = ("quality", "alignment")

PLACEHOLDER: Final = "{prompt}"

# fmt: off
CONTEXT_PROMPTS: Final[dict[tuple[str, str], str]] = {
    ("quality", "image"): (
        '<image>Suppose you are an expert in evaluating the visual quality of AI-generated image.'
        ' First identify any visual distortions and positive visual appeal regarding low-level features and aesthetics.'
        " Next, assess the severity of distortions and their impact on the viewing experience, noting whether they are subtle or distracting, and evaluate how the positive features enhance the image's visual appeal, considering their strength and contribution to the overall aesthetics."
        ' Finally, balance the identified distortions against the positive aspects and give your rating on the visual quality.'
        ' \nYour rating should be chosen from the following five categories:'
        ' Excellent, Good, Fair, Poor, and Bad.\nFor this image, the text prompt is "{prompt}".'
        ' Now please rate this image:'
    ),
    ("quality", "video"): (
        '<video>Suppose you are an expert in evaluating the visual quality of AI-generated video.'
        ' First identify any visual distortions and positive visual appeal regarding low-level features and aesthetics.'
        " Next, assess the severity of distortions and their impact on the viewing experience, noting whether they are subtle or distracting, and evaluate how the positive features enhance the video's visual appeal, considering their strength and contribution to the overall aesthetics."
        ' Finally, balance the identified distortions against the positive aspects and give your rating on the visual quality.'
        ' \nYour rating should be chosen from the following five categories:'
        ' Excellent, Good, Fair, Poor, and Bad.\nFor this video, the text prompt is "{prompt}".'
        ' Now please rate this video:'
    ),
    ("alignment", "image"): (
        '<image>Suppose you are an expert in evaluating the alignment between the text prompt and the AI-generated image.'
        ' Begin by considering whether the overall concept of the prompt is captured in the image.'
        ' Then, examine the specific details, such as the presence of key objects, their attributes, and relationships.'
        ' Check if the visual content accurately reflects these aspects.'
        ' Finally, give your alignment rating considering both overall and detailed accuracy.'
        '\nYour rating should be chosen from the following five categories:'
        ' Excellent, Good, Fair, Poor, and Bad.\nFor this image, the text prompt is "{prompt}".'
        ' Now please rate this image:'
    ),
    ("alignment", "video"): (
        '<video>Suppose you are an expert in evaluating the alignment between the text prompt and the AI-generated video.'
        ' Begin by considering whether the overall concept of the prompt is captured in the video.'
        ' Then, examine the specific details, such as the presence of key objects, their attributes, and relationships.'
        ' Check if the visual content accurately reflects these aspects.'
        ' Finally, give your alignment rating considering both overall and detailed accuracy.'
        '\nYour rating should be chosen from the following five categories:'
        ' Excellent, Good, Fair, Poor, and Bad.\nFor this video, the text prompt is "{prompt}".'
        ' Now please rate this video:'
    ),
}
# fmt: on

# The rating words and their weights, as the reference reads and weighs them.
RATING_TOKENS: Final = ("Excellent", "Good", "Fair", "Poor", "Bad")
RATING_WEIGHTS: Final = (1.0, 0.75, 0.5, 0.25, 0.0)
_WEIGHTS = np.asarray(RATING_WEIGHTS, dtype=np.float64)


def context_prompt(aspect: str, media_type: str, prompt: str) -> str:
    """The user text for one item and aspect, exactly as the reference builds it (an f-string)."""
    template = CONTEXT_PROMPTS[(aspect, media_type)]
    before, after = template.split(PLACEHOLDER)
    return before + prompt + after


# --- five log-probs -> probabilities -> score -----------------------------------------------------


def rating_probabilities(logprobs: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (the five rating tokens), in float64 and numerically stable.

    A softmax over five values is unchanged by a shift common to all five, so full-vocabulary
    log-probs and raw logits give the same probabilities.
    """
    x = np.asarray(logprobs, dtype=np.float64)
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


# The five ratings on the 1-5 MOS scale (Excellent = 5 ... Bad = 1): ``1 + 4 * weight``.
MOS_LEVELS: Final = tuple(1.0 + 4.0 * w for w in RATING_WEIGHTS)
_LEVELS = np.asarray(MOS_LEVELS, dtype=np.float64)


def spread_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """The standard deviation of the five-level distribution on the 1-5 scale: how sure the model
    is. 0 when one rating takes all the mass, 2 at most (half on Excellent, half on Bad).

    ``sqrt(sum_k p_k (level_k - mean)^2)`` with ``mean = sum_k p_k level_k = 1 + 4 * score`` and the
    probabilities normalised to sum to 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    mean = p @ _LEVELS
    variance = (p * (_LEVELS - mean[..., None]) ** 2).sum(axis=-1)
    return np.sqrt(np.maximum(variance, 0.0))


@dataclass(frozen=True)
class CombinedParts:
    probabilities: np.ndarray  # (5,): the parts' probabilities, weighted as the scores are
    vague: float  # the vague part's score
    specific: list[float]  # each specific part's score


def combine_parts(probabilities: np.ndarray, options: v2s.V2SOptions) -> CombinedParts:
    """Rows of ``probabilities`` are a long prompt's parts, vague first: their weighted combination."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    scores = score_from_probabilities(probabilities)
    return CombinedParts(v2s.weighted(probabilities, options), float(scores[0]), [float(s) for s in scores[1:]])


# --- output columns -------------------------------------------------------------------------------


def probability_column(aspect: str, token: str) -> str:
    return f"{aspect}_p_{token.lower()}"


def probability_columns(aspect: str) -> list[str]:
    return [probability_column(aspect, t) for t in RATING_TOKENS]


def spread_column(aspect: str) -> str:
    """``quality_std``: the spread of the aspect's five-level distribution (:func:`spread_from_probabilities`)."""
    return f"{aspect}_std"


class AlignmentMethod:
    """How a row's alignment was scored (``alignment_method``)."""

    DIRECT = "direct"  # on the whole prompt, as the reference does
    PARTS = "v2s"  # a long prompt, from its Vague-to-Specific parts (qeval_ray.v2s)


ALIGNMENT_METHOD = "alignment_method"
ALIGNMENT_VAGUE = "alignment_vague"
ALIGNMENT_SPECIFIC = "alignment_specific"

SCORE_FIELDS = [
    field
    for aspect in ASPECTS
    for field in [pa.field(aspect, pa.float64())] + [pa.field(c, pa.float64()) for c in probability_columns(aspect)]
    + [pa.field(spread_column(aspect), pa.float64())]
]
# How the alignment was scored and, for a prompt scored in parts, each part's score. The parts'
# texts are the manifest's own v2s_* columns, passed through.
V2S_FIELDS = [
    pa.field(ALIGNMENT_METHOD, pa.string()),
    pa.field(ALIGNMENT_VAGUE, pa.float64()),
    pa.field(ALIGNMENT_SPECIFIC, pa.list_(pa.float64())),
]


# --- the scorer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QEvalScorer(Scorer):
    """Visual quality and text alignment, as Q-Eval-Score rates them."""

    aspects: tuple[str, ...] = ASPECTS
    v2s_options: v2s.V2SOptions | None = None  # score long prompts' alignment in parts (None: never)

    name = "qeval"
    version = PROMPT_VERSION

    @property
    def tokens(self) -> tuple[str, ...]:
        return RATING_TOKENS

    def fields(self) -> list[pa.Field]:
        return SCORE_FIELDS + V2S_FIELDS

    def inputs(self) -> tuple[str, ...]:
        return (PROMPT, V2S_VAGUE, V2S_SPECIFIC) if self.v2s_options is not None else (PROMPT,)

    def refuse(self, row: Mapping) -> str | None:
        prompt = row.get(PROMPT)
        if prompt is None or not prompt.strip():
            return "prompt is empty: both context prompts quote the item's prompt"
        bad = forbidden_prompt_text(prompt)
        if bad:
            return f"prompt contains the model's vision token {bad!r}, which cannot be scored"
        if self.v2s_options is not None:
            try:
                self._parts(row)
            except v2s.V2SError as e:
                return f"V2S parts: {e}"
        return None

    def _parts(self, row: Mapping) -> list[str] | None:
        return v2s.parts(row[PROMPT], row.get(V2S_VAGUE), row.get(V2S_SPECIFIC), self.v2s_options)

    def prompts(self, row: Mapping, media_type: str) -> dict[str, list[str]]:
        texts = {}
        for aspect in self.aspects:
            quoted = [row[PROMPT]]
            if aspect == "alignment" and self.v2s_options is not None:
                quoted = self._parts(row) or quoted  # refused rows never get this far
            texts[aspect] = [context_prompt(aspect, media_type, text) for text in quoted]
        return texts

    def columns(self, answers: dict[str, np.ndarray]) -> dict[str, object]:
        values: dict[str, object] = {}
        for aspect, logprobs in answers.items():
            p = rating_probabilities(logprobs)
            if aspect == "alignment":
                p = self._alignment(p, values)
            else:
                p = p[0]
            values[aspect] = float(score_from_probabilities(p))
            values.update({name: float(v) for name, v in zip(probability_columns(aspect), p)})
            # For V2S rows: the spread of the combined probabilities, the ones the row carries.
            values[spread_column(aspect)] = float(spread_from_probabilities(p))
        return values

    def _alignment(self, probabilities: np.ndarray, values: dict) -> np.ndarray:
        """The whole prompt's probabilities, or a long prompt's parts combined (each part's score kept)."""
        if len(probabilities) == 1:
            values[ALIGNMENT_METHOD] = AlignmentMethod.DIRECT
            return probabilities[0]
        combined = combine_parts(probabilities, self.v2s_options)
        values.update({ALIGNMENT_METHOD: AlignmentMethod.PARTS, ALIGNMENT_VAGUE: combined.vague,
                       ALIGNMENT_SPECIFIC: combined.specific})
        return combined.probabilities
