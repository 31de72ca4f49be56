"""The reference engine: HF transformers, a plain forward pass as the reference's ``infer.py``.

Requests are batched with left padding, so the last position of every row is its own next-token
position; only that position's logits are computed (``logits_to_keep=1``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qeval_ray.engines.base import Engine, EngineConfig, ScoreRequest, chat_prompt
from qeval_ray.rating import check_distinct, rating_token_ids


class HFEngine(Engine):
    name = "hf"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        self.torch = torch
        torch.manual_seed(config.seed)
        self.processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            config.model, revision=config.revision, dtype=getattr(torch, config.dtype)
        ).to(config.device).eval()
        self.token_ids = rating_token_ids(self.processor.tokenizer)
        check_distinct(self.token_ids)

    def _forward(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        images = [r.media.pixels for r in requests if r.media.kind == "image"]
        videos = [r.media.pixels for r in requests if r.media.kind == "video"]
        fps = [r.media.fps for r in requests if r.media.kind == "video"]
        kwargs = {}
        if videos:
            # The frames are already sampled and sized by qwen-vl-utils' rules: the video processor
            # must neither re-sample nor resize them.
            kwargs.update(do_sample_frames=False, fps=fps)
        inputs = self.processor(
            text=[chat_prompt(self.processor, r) for r in requests],
            images=images or None,
            videos=videos or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **kwargs,
        ).to(self.model.device)
        with self.torch.inference_mode():
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
        return logits[:, self.token_ids].float().cpu().numpy().astype(np.float64)

    def rating_logprobs(self, requests: Sequence[ScoreRequest]) -> np.ndarray:
        if not requests:
            return np.zeros((0, len(self.token_ids)))
        step = max(1, self.config.hf_batch_size)
        return np.concatenate([self._forward(requests[i : i + step]) for i in range(0, len(requests), step)])
