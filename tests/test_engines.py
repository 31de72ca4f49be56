"""Engine-level behaviour on the tiny model: the media reaches the model; batching changes nothing."""

import numpy as np
import pytest

from qeval_ray import media

from qeval_ray.testing import synthetic
from qeval_ray.engines import load_engine
from qeval_ray.engines.base import EngineConfig, Media, ScoreRequest, chat_prompt
from qeval_ray.scorers.qeval import RATING_TOKENS, context_prompt

pytestmark = pytest.mark.slow  # builds an engine


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    return load_engine("hf", EngineConfig(model=tiny_model))


def _image(seed, h=140, w=200):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(synthetic.pattern(h, w, seed)).save(buf, format="PNG")
    return Media("image", media.decode_image(buf.getvalue(), media.ImageOptions(max_pixels=64 * 28 * 28)))


def _rate(engine, requests):
    return engine.next_token_logprobs(requests, engine.token_ids(RATING_TOKENS))


def _request(img, aspect="quality", prompt="a red fox in the snow"):
    return ScoreRequest(img, context_prompt(aspect, "image", prompt))


def test_the_image_reaches_the_model(hf_engine):
    a, b = _image(1), _image(2)
    la, lb, la2 = _rate(hf_engine, [_request(a), _request(b), _request(_image(1))])
    assert not np.allclose(la, lb, atol=1e-4)  # different pixels, different ratings
    assert np.allclose(la, la2, atol=1e-6)  # same pixels, same ratings


def test_the_prompt_and_aspect_reach_the_model(hf_engine):
    img = _image(3)
    q, al, other = _rate(
        hf_engine,
        [_request(img, "quality"), _request(img, "alignment"), _request(img, "quality", "a bowl of ramen")]
    )
    assert not np.allclose(q, al, atol=1e-4) and not np.allclose(q, other, atol=1e-4)


def test_batching_and_padding_change_nothing(hf_engine):
    reqs = [_request(_image(s, 60 + 30 * s, 90 + 20 * s), prompt=synthetic.prompt_for(s)) for s in range(5)]
    batched = _rate(hf_engine, reqs)
    single = np.concatenate([_rate(hf_engine, [r]) for r in reqs])
    assert np.allclose(batched, single, atol=1e-4)


def test_prompt_is_the_reference_chat_template(hf_engine):
    text = chat_prompt(hf_engine.processor, _request(_image(0)))
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert "<|vision_start|><|image_pad|><|vision_end|><image>Suppose you are an expert" in text
    assert text.endswith("Now please rate this image:<|im_end|>\n<|im_start|>assistant\n")


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("onnx", EngineConfig(model="x"))


def test_position_ids_follow_the_reference_rule(hf_engine):
    """After a video, text continues at the video's largest position + 1, temporal extent included
    (transformers 4.46 and vLLM); transformers 5.x would continue at max(h, w) instead."""
    from qeval_ray.engines.base import processor_kwargs
    from qeval_ray.engines.hf import reference_position_ids

    cfg = hf_engine.model.config
    frames = np.stack([synthetic.pattern(84, 140, i) for i in range(12)])  # grid t=6, merged h=3, w=5
    video = ScoreRequest(Media("video", frames), context_prompt("quality", "video", "x"))
    image = _request(_image(4))
    inputs = hf_engine.processor(
        text=[chat_prompt(hf_engine.processor, r) for r in (video, image)], images=[image.media.pixels],
        videos=[frames], padding=True, padding_side="left", return_tensors="pt",
        **processor_kwargs(hf_engine.processor),
    )
    pos = reference_position_ids(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"],
                                 inputs["video_grid_thw"], cfg)
    ids = inputs["input_ids"][0]
    where = (ids == cfg.video_token_id).nonzero().flatten()
    block = pos[:, 0, where]
    assert block[0].max() - block[0].min() == 5 and block[1].max() - block[1].min() == 2
    after = pos[:, 0, where[-1] + 1]
    assert (after == block.max() + 1).all()
    # For images (t = 1) both rules agree: transformers' own positions are the same.
    ours_image = pos[:, 1][:, inputs["attention_mask"][1].bool()]
    theirs, _ = hf_engine.model.model.get_rope_index(
        inputs["input_ids"][1:], mm_token_type_ids=inputs.get("mm_token_type_ids")[1:]
        if "mm_token_type_ids" in inputs else None,
        image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"][1:],
    )
    assert torch_equal(ours_image, theirs[:, 0][:, inputs["attention_mask"][1].bool()])


def torch_equal(a, b):
    import torch

    return torch.equal(a.cpu(), b.cpu())
