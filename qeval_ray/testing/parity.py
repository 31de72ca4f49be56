"""Parity with the reference's own stack: transformers 4.46.0, as ``utils/infer.py`` pins it.

``scripts/parity.py`` (``make parity``) installs transformers 4.46.0 into a side folder, converts the
tiny model to a form 4.46 loads (:func:`to_tf446`), and scores the same generated items three ways:

- ``tf446``: the reference's path, 4.46.0's processor and ``model(**inputs)`` with no
  ``position_ids`` (its forward then gives every rotary axis the flat positions 0..L-1);
- ``tf446_rope``: the same with 4.46's own ``get_rope_index`` positions passed in (M-RoPE);
- this job's HF engine with ``rope_positions`` ``flat`` and ``mrope``.

The 4.46 side runs in a subprocess (``python -m qeval_ray.testing.parity tf446 ...``) whose
``PYTHONPATH`` puts the 4.46 folder first; it gets the decoded pixels from this side (an ``.npz``)
and imports nothing of this package that imports transformers. Items are generated from seeds (:data:`ITEMS`), so the offline tests regenerate the
media of the committed fixture (``tests/fixtures/tf446_logprobs.json``) exactly.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qeval_ray import media
from qeval_ray.engines.base import Media, ScoreRequest, chat_messages, first_token_ids
from qeval_ray.scorers.qeval import RATING_TOKENS, context_prompt
from qeval_ray.testing import synthetic

TF446 = ("transformers==4.46.0", "tokenizers==0.20.3", "huggingface_hub==0.26.1")
FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tf446_logprobs.json"


@dataclass(frozen=True)
class Item:
    id: str
    kind: str  # image | video
    seed: int
    width: int
    height: int
    aspect: str = "quality"
    frames: int = 0  # video: source frames
    fps: float = 0.0  # video: source frame rate
    codec: str = "libx264"  # video

    @property
    def prompt(self) -> str:
        return synthetic.prompt_for(self.seed)


# Small enough for 4.46's vision attention (an N x N mask over the media's patches) on CPU; 60 s
# 1080p clips are left out on purpose (53 GB for that mask).
ITEMS = [
    Item("img-64x64", "image", 1, 64, 64),
    Item("img-200x140", "image", 2, 200, 140, "alignment"),
    Item("img-517x333", "image", 3, 517, 333),
    Item("img-400x600", "image", 4, 400, 600, "alignment"),
    Item("img-1003x97", "image", 5, 1003, 97),
    Item("img-512x512", "image", 6, 512, 512, "alignment"),
    Item("clip-160x96-24fps", "video", 11, 160, 96, frames=12, fps=24),
    Item("clip-320x180-24fps", "video", 12, 320, 180, "alignment", frames=36, fps=24),
    Item("clip-640x360-30fps", "video", 13, 640, 360, frames=45, fps=30),
    Item("clip-200x120-8fps", "video", 14, 200, 120, "alignment", frames=20, fps=8),
    Item("clip-321x241-mpeg4", "video", 15, 321, 241, frames=30, fps=25, codec="mpeg4"),
    Item("clip-256x144-60fps", "video", 16, 256, 144, "alignment", frames=60, fps=60),
]
# The committed fixture's items: the smallest of each kind, so the offline test stays quick.
FIXTURE_ITEMS = ("img-64x64", "img-200x140", "img-517x333", "clip-160x96-24fps", "clip-200x120-8fps",
                 "clip-321x241-mpeg4")


def item_media(item: Item) -> Media:
    """The item's pixels as this job decodes them (equal to qwen-vl-utils', tested elsewhere)."""
    if item.kind == "image":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(synthetic.pattern(item.height, item.width, item.seed)).save(buf, format="PNG")
        return Media("image", media.decode_image(buf.getvalue()))
    with tempfile.TemporaryDirectory() as tmp:
        path = synthetic.write_video(Path(tmp) / "clip.mp4", item.frames, item.fps, item.width, item.height,
                                     seed=item.seed, codec=item.codec)
        return Media("video", media.decode_video(path.read_bytes()).frames)


def item_request(item: Item) -> ScoreRequest:
    return ScoreRequest(item_media(item), context_prompt(item.aspect, item.kind, item.prompt))


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the weights' names, shapes and bytes: the fixture is only valid for this model."""
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(model_dir) / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(f"{name}:{tensors[name].dtype}:{tensors[name].shape}".encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


# --- the model in a form transformers 4.46 loads ---------------------------------------------------

_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "hidden_act", "max_position_embeddings", "rms_norm_eps", "vocab_size", "use_sliding_window",
              "max_window_layers", "attention_dropout", "initializer_range", "bos_token_id", "eos_token_id",
              "use_cache")
_VISION_KEYS = ("depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels",
                "patch_size", "spatial_merge_size", "temporal_patch_size")


def to_tf446(src: str | Path, dst: str | Path) -> Path:
    """Copy a transformers 5.x Qwen2-VL directory into the layout 4.46 reads: a flat ``config.json``
    (text fields at the top, ``rope_scaling`` of type ``mrope``), a ``tokenizer_config.json`` for
    ``PreTrainedTokenizerFast``, ``preprocessor_config.json`` and ``chat_template.json``. The weights
    file is copied unchanged (its tensor names are already 4.46's)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    rope = text.get("rope_parameters") or {}
    flat = {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "torch_dtype": "float32",
        "transformers_version": "4.46.0", "tie_word_embeddings": config.get("tie_word_embeddings", False),
        **{k: text[k] for k in _TEXT_KEYS if text.get(k) is not None},
        "rope_theta": rope["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
        **{k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                  "vision_end_token_id")},
        "vision_config": {k: vision[k] for k in _VISION_KEYS},
    }
    (dst / "config.json").write_text(json.dumps(flat, indent=2))
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    tok = json.loads((src / "tokenizer_config.json").read_text())
    template = (src / "chat_template.jinja").read_text()
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tok["eos_token"], "pad_token": tok["pad_token"],
        "additional_special_tokens": list(tok.get("extra_special_tokens", [])),
        "model_max_length": tok.get("model_max_length", 32768), "chat_template": template,
        "processor_class": "Qwen2VLProcessor"}, indent=2))
    image = json.loads((src / "processor_config.json").read_text())["image_processor"]
    (dst / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": image["image_mean"], "image_std": image["image_std"], "resample": image["resample"],
        "rescale_factor": image["rescale_factor"], "patch_size": image["patch_size"],
        "merge_size": image["merge_size"], "temporal_patch_size": image["temporal_patch_size"],
        # Qwen2-VL-7B-Instruct's own bounds, which the reference's processor applies after
        # qwen-vl-utils: media already sized by its rules pass through unchanged.
        "min_pixels": image["size"]["shortest_edge"], "max_pixels": image["size"]["longest_edge"]}, indent=2))
    (dst / "chat_template.json").write_text(json.dumps({"chat_template": template}, indent=2))
    return dst


# --- the 4.46 side (runs under transformers 4.46.0) ------------------------------------------------


def tf446_logprobs(model_dir: str, requests: list[ScoreRequest]) -> dict[str, np.ndarray]:
    """Rating log-probs under transformers 4.46.0, one unpadded item per call as ``infer.py`` runs:
    ``tf446`` (its default forward), ``tf446_rope`` (with its ``get_rope_index`` positions) and
    ``tf446_flat_check`` (with explicit flat positions: equals ``tf446`` if the forward is flat)."""
    import torch
    import transformers
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    assert transformers.__version__ == "4.46.0", f"transformers {transformers.__version__} on the path, not 4.46.0"
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = first_token_ids(processor.tokenizer, RATING_TOKENS)
    out = {"tf446": [], "tf446_rope": [], "tf446_flat_check": []}
    with torch.inference_mode():
        for request in requests:
            text = processor.apply_chat_template(chat_messages(request), tokenize=False, add_generation_prompt=True)
            pixels = request.media.pixels
            inputs = processor(text=[text], images=[pixels] if request.media.kind == "image" else None,
                               videos=[pixels] if request.media.kind == "video" else None, return_tensors="pt")
            rope, _ = model.get_rope_index(inputs["input_ids"], inputs.get("image_grid_thw"),
                                           inputs.get("video_grid_thw"), inputs["attention_mask"])
            length = inputs["input_ids"].shape[1]
            flat = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
            for key, positions in (("tf446", None), ("tf446_rope", rope), ("tf446_flat_check", flat)):
                logits = model(**inputs, position_ids=positions).logits[:, -1]
                out[key].append(torch.log_softmax(logits.double(), dim=-1)[0, ids].numpy())
    return {k: np.stack(v) for k, v in out.items()}


def save_requests(requests: list[ScoreRequest], path: str | Path) -> None:
    """The decoded requests for the 4.46 worker: pixels in an ``.npz``, kinds and texts in JSON
    (no pickles; the worker then needs neither decoders nor qwen-vl-utils)."""
    np.savez(path, **{f"pixels_{n}": r.media.pixels for n, r in enumerate(requests)})
    Path(path).with_suffix(".json").write_text(json.dumps([{"kind": r.media.kind, "text": r.text}
                                                           for r in requests]))


def load_requests(path: str | Path) -> list[ScoreRequest]:
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    with np.load(path, allow_pickle=False) as arrays:
        return [ScoreRequest(Media(m["kind"], arrays[f"pixels_{n}"]), m["text"]) for n, m in enumerate(meta)]


def _tf446_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rating log-probs under transformers 4.46.0 (parity worker)")
    parser.add_argument("model_dir")
    parser.add_argument("requests", help=".npz written by save_requests")
    parser.add_argument("out", help=".npz to write")
    args = parser.parse_args(argv)
    np.savez(args.out, **tf446_logprobs(args.model_dir, load_requests(args.requests)))


def fixture_record(items: list[Item], logprobs: dict[str, np.ndarray], digest: str) -> dict:
    import torch

    return {
        "about": "Rating log-probs (Excellent, Good, Fair, Poor, Bad) of the tiny model under transformers "
                 "4.46.0, one item per forward as the reference's infer.py; regenerate with `make parity`.",
        "stack": {"transformers": "4.46.0", "tokenizers": "0.20.3", "torch": torch.__version__, "dtype": "float32"},
        "model_digest": digest,
        "items": [{**asdict(item), "tf446": logprobs["tf446"][n].tolist(),
                   "tf446_rope": logprobs["tf446_rope"][n].tolist()} for n, item in enumerate(items)],
    }


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "tf446":
        _tf446_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m qeval_ray.testing.parity tf446 MODEL_DIR REQUESTS.npz OUT.npz")
