"""The four context prompts are the reference's, byte for byte, and are filled in as it fills them."""

import hashlib

import pytest

from qeval_ray.contracts.schema import MEDIA_TYPES
from qeval_ray.scorers import qeval as prompts
from qeval_ray.engines.base import forbidden_prompt_text

# SHA-256 of each string in the Q-Eval-100K reference (utils/infer.py; reference_prompts.json).
PINNED = {
    ("quality", "image"): "e0dd8c20045ddd602195115f99d3abf72d0ed517f268118592672d57c353214e",
    ("quality", "video"): "a9ffd2472994f50c97c5a7bbaf0b6ed871f7c0a4f8a9c9e44487d72ad6c6c68b",
    ("alignment", "image"): "7e02bd638b86f92388e7403fae8dcf38ac7683cffedf3f4ebfc58e3d972c1905",
    ("alignment", "video"): "db43dfeaa9618bad9c5bfc8eafa2230ace8f6ebbc152cb2615d1ac24e1aee0d1",
}

# The alignment/image prompt as the reference script writes it (its f-string, with {prompt_image}).
REFERENCE_ALIGNMENT_IMAGE = (
    "<image>Suppose you are an expert in evaluating the alignment between the text prompt and the "
    "AI-generated image. Begin by considering whether the overall concept of the prompt is captured in "
    "the image. Then, examine the specific details, such as the presence of key objects, their "
    "attributes, and relationships. Check if the visual content accurately reflects these aspects. "
    "Finally, give your alignment rating considering both overall and detailed accuracy.\nYour rating "
    "should be chosen from the following five categories: Excellent, Good, Fair, Poor, and Bad.\nFor "
    "this image, the text prompt is \"{prompt}\". Now please rate this image:"
)


@pytest.mark.parametrize("key", sorted(PINNED))
def test_prompt_strings_are_pinned(key):
    assert hashlib.sha256(prompts.CONTEXT_PROMPTS[key].encode("utf-8")).hexdigest() == PINNED[key]


def test_prompt_matches_reference_text():
    assert prompts.CONTEXT_PROMPTS[("alignment", "image")] == REFERENCE_ALIGNMENT_IMAGE


@pytest.mark.parametrize("aspect", prompts.ASPECTS)
@pytest.mark.parametrize("media", MEDIA_TYPES)
def test_prompt_shape(aspect, media):
    text = prompts.CONTEXT_PROMPTS[(aspect, media)]
    assert text.startswith(f"<{media}>")  # the literal tag the released model was trained with
    assert text.count("{prompt}") == 1
    assert "Excellent, Good, Fair, Poor, and Bad." in text
    assert text.endswith(f"Now please rate this {media}:")


def test_context_prompt_inserts_the_item_prompt_verbatim():
    item = 'a "quoted" {prompt} with {braces} and 東京 — emoji 🦊'
    filled = prompts.context_prompt("quality", "video", item)
    template = prompts.CONTEXT_PROMPTS[("quality", "video")]
    assert filled == template.replace("{prompt}", item, 1)
    assert f'the text prompt is "{item}". Now please' in filled


def test_rating_tokens_and_weights_are_the_reference_ones():
    assert prompts.RATING_TOKENS == ("Excellent", "Good", "Fair", "Poor", "Bad")
    assert prompts.RATING_WEIGHTS == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert prompts.PROMPT_VERSION


def test_vision_tokens_in_prompts_are_found():
    assert forbidden_prompt_text("a <|video_pad|> b") == "<|video_pad|>"
    assert forbidden_prompt_text("chat tokens like <|im_end|> are the reference's business") is None
