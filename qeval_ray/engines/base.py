"""The engine interface: requests (media + user text) in, next-token log-probs of given tokens out.

An engine is built once per scoring actor from an :class:`EngineConfig`. Both engines render the
prompt the same way (:func:`chat_prompt`: the Qwen2-VL chat template, default system prompt, one
user turn with the media first) and return, per request, the full-vocabulary log-probs of the
tokens asked for at the next-token position. Engines know nothing about scorers: which texts to
ask and which tokens to read is the scorer's business (``qeval_ray.scorers``).

Two ways of being fed, by what suits the engine:

- a *batch* engine (HF) takes many items in one blocking call, :meth:`Engine.next_token_logprobs`;
  the caller narrows a failing call down to its items;
- a *concurrent* engine (vLLM's ``AsyncLLM``) takes each item's prompts as separate requests,
  :meth:`Engine.item_logprobs`, awaited for many items and batches at once, so the engine never
  drains between batches; each item fails alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np


# How the HF engine gives text positions around media (see qeval_ray.engines.hf): "mrope" (the
# default: as the model was trained) or "flat" (transformers 4.46.0's forward, the reference's pin).
ROPE_POSITIONS = ("mrope", "flat")


@dataclass(frozen=True)
class EngineConfig:
    model: str
    revision: str | None = None
    dtype: str = "float32"  # resolved: float16 | bfloat16 | float32
    device: str = "cpu"  # "cuda" when the actor holds a GPU
    max_model_len: int | None = None
    enforce_eager: bool = False  # vLLM: skip graph capture / torch.compile (much faster start on CPU)
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None
    hf_batch_size: int = 8  # HF: sequences per forward pass
    seed: int = 0
    load_format: str = "auto"  # "dummy": random weights from the config (benchmarks of the architecture)
    tensor_parallel_size: int = 1  # vLLM: GPUs one engine spans (models that do not fit one GPU)
    rope_positions: str = ROPE_POSITIONS[0]  # HF: "mrope" | "flat" (ROPE_POSITIONS)


@dataclass(frozen=True)
class Media:
    """Decoded pixels as the model takes them: H x W x 3 (image) or T x H x W x 3 (video), uint8.

    Qwen2-VL's temporal positions count frames, not seconds, so a clip needs no frame metadata.
    """

    kind: str  # "image" | "video"
    pixels: np.ndarray
    digest: str | None = None  # content digest of the pixels (media.pixel_digest): the engine's cache key


@dataclass(frozen=True)
class ScoreRequest:
    media: Media
    text: str  # the context prompt (user text after the media)


class Engine(ABC):
    name: ClassVar[str]
    concurrent: ClassVar[bool] = False  # see the module doc: fed item by item, many at once

    def __init__(self, config: EngineConfig):
        self.config = config

    @property
    @abstractmethod
    def tokenizer(self): ...

    def next_token_logprobs(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        """A ``(len(requests), len(token_ids))`` array of log-probs (softmax over the whole vocabulary)
        at the position after each prompt, rows in request order. Raises if any request fails.
        Batch engines implement this."""
        raise NotImplementedError(f"the {self.name} engine is fed item by item (item_logprobs)")

    async def item_logprobs(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        """The same for one item's requests (all about the same media), awaited: concurrent engines
        implement this; a batch engine runs its batched call in a worker thread."""
        import asyncio

        return await asyncio.to_thread(self.next_token_logprobs, requests, token_ids)

    def token_ids(self, words: Sequence[str]) -> list[int]:
        """The ids to read for ``words``: the first sub-token id of each, distinct (see
        :func:`first_token_ids`)."""
        ids = first_token_ids(self.tokenizer, words)
        if len(set(ids)) != len(ids):
            raise ValueError(f"the words do not map to distinct token ids: {dict(zip(words, ids))}")
        return ids

    async def reset_caches(self) -> None:  # noqa: B027 - engines without caches need nothing here
        """Forget cached prefixes and media (benchmarks: every timed run starts cold)."""

    def close(self) -> None:  # noqa: B027 - engines without processes or threads need nothing here
        """Release the engine (its processes) before the actor exits."""

    def is_dead(self) -> bool:
        """Whether the engine's own processes have gone (checked from a watchdog thread)."""
        return False

    def is_fatal(self, error: BaseException) -> bool:
        """Whether ``error`` leaves the engine unusable (the actor must be replaced, not the item
        blamed): CUDA faults, and engine-specific dead states."""
        text = str(error)
        return any(s in text for s in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "out of memory"))


def chat_messages(request: ScoreRequest) -> list[dict]:
    """One user turn ``[media, text]``: media first, as the reference builds it."""
    return [{"role": "user", "content": [{"type": request.media.kind}, {"type": "text", "text": request.text}]}]


def chat_prompt(processor, request: ScoreRequest) -> str:
    """The reference's prompt string: chat template, default system prompt, generation prompt."""
    return processor.apply_chat_template(chat_messages(request), tokenize=False, add_generation_prompt=True)


def processor_kwargs(processor) -> dict:
    """Processor settings both engines pass: media arrive already sampled and sized.

    The decode stage samples frames and resizes media by qwen-vl-utils' rules (sizes are multiples
    of 28), exactly as the reference hands them to its processor. The processor must not resample
    or resize them again: transformers' own video defaults (at least 128 merged patches per frame)
    would upscale the reference's smaller frames and change the scores.
    """
    kwargs = {"do_resize": False, "do_sample_frames": False}
    video = getattr(processor, "video_processor", None)
    if video is not None and hasattr(type(video), "cap_pixels_per_frame"):
        # Newer transformers warn that they do not cap pixels per frame as qwen-vl-utils does; the
        # frames are capped already and not resized, so adopt the capped behaviour and be quiet.
        kwargs["cap_pixels_per_frame"] = True
    return kwargs


# The Qwen-VL vision placeholders: a text containing one would break the processor's count of media
# tokens for its request (the reference fails on it), so scorers refuse such texts up front.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def forbidden_prompt_text(text: str) -> str | None:
    """The first vision token found in ``text``, or None."""
    return next((t for t in VISION_TOKENS if t in text), None)


def first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """First sub-token id of each word, as the Q-Eval reference computes them:
    ``tokenizer(words)["input_ids"]`` (no leading space, special tokens left to the tokenizer's
    default) and ``[0]`` of each."""
    return [int(seq[0]) for seq in tokenizer(list(words))["input_ids"]]
