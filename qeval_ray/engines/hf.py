"""The reference engine: HF transformers, a plain forward pass as the reference's ``infer.py``.

Requests are batched with left padding, so the last position of every row is its own next-token
position; only that position's logits are computed (``logits_to_keep=1``).

Positions (``EngineConfig.rope_positions``):

- ``mrope`` (default): Qwen2-VL's M-RoPE positions, computed here (:func:`reference_position_ids`)
  as transformers 4.46's ``get_rope_index``, ms-swift's training collator and vLLM compute them:
  a vision block gets (t, h, w) grid positions, and the text after it continues at the block's
  largest position + 1, its temporal extent included. transformers 5.x's own rule continues at
  ``max(h, w)`` instead, which changes every video whose temporal grid is longer than its spatial
  one (most clips sampled at 8 fps): seen here as a 1.7e-4 score difference on a 12-frame 84x140
  clip, gone with these positions. Q-Eval-Score was fine-tuned with ms-swift, whose Qwen2-VL
  collator passes ``get_rope_index`` positions in training (modelscope/ms-swift,
  ``swift/llm/utils/template.py`` in 2.x, ``swift/llm/template/template/qwen.py`` from 3.0), so
  these are the positions the model learnt.
- ``flat``: every rotary axis gets the plain positions 0..L-1 of the sequence (padding excluded).
  That is what the reference's ``infer.py`` computes: it pins transformers 4.46.0 and calls
  ``model(**inputs)`` without ``position_ids``, and 4.46's forward then uses the cache positions on
  all three axes (``get_rope_index`` runs only inside ``generate()``; 4.47.0 is the first release
  whose forward computes M-RoPE itself). Use it to reproduce ``infer.py``'s numbers, not as the
  model's meaning: it is a train/inference mismatch of the reference script.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qeval_ray.engines.base import (ROPE_POSITIONS, Engine, EngineConfig, ScoreRequest, chat_prompt,
                                    processor_kwargs)


class HFEngine(Engine):
    name = "hf"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        self.torch = torch
        torch.manual_seed(config.seed)
        self.processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
        dtype = getattr(torch, config.dtype)
        if config.load_format == "dummy":  # the architecture with random weights, made on the device
            from transformers import AutoConfig

            with torch.device(config.device):
                self.model = Qwen2VLForConditionalGeneration._from_config(
                    AutoConfig.from_pretrained(config.model), dtype=dtype).eval()
        else:
            self.model = Qwen2VLForConditionalGeneration.from_pretrained(
                config.model, revision=config.revision, dtype=dtype
            ).to(config.device).eval()
        self.processor_kwargs = processor_kwargs(self.processor)
        if config.rope_positions not in ROPE_POSITIONS:
            raise ValueError(f"unknown rope_positions {config.rope_positions!r}: one of {ROPE_POSITIONS}")

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def _forward(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        images = [r.media.pixels for r in requests if r.media.kind == "image"]
        videos = [r.media.pixels for r in requests if r.media.kind == "video"]
        inputs = self.processor(
            text=[chat_prompt(self.processor, r) for r in requests],
            images=images or None,
            videos=videos or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **self.processor_kwargs,
        ).to(self.model.device)
        if self.config.rope_positions == "flat":
            positions = flat_position_ids(inputs["attention_mask"])
        else:
            positions = reference_position_ids(
                inputs["input_ids"], inputs["attention_mask"], inputs.get("image_grid_thw"),
                inputs.get("video_grid_thw"), self.model.config,
            )
        with self.torch.inference_mode():
            logits = self.model(**inputs, position_ids=positions, logits_to_keep=1).logits[:, -1]
            logprobs = self.torch.log_softmax(logits.double(), dim=-1)  # float64: the reference yardstick
        return logprobs[:, list(token_ids)].cpu().numpy().astype(np.float64)

    def next_token_logprobs(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        if not requests:
            return np.zeros((0, len(token_ids)))
        step = max(1, self.config.hf_batch_size)
        return np.concatenate([self._forward(requests[i : i + step], token_ids)
                               for i in range(0, len(requests), step)])


def reference_position_ids(input_ids, attention_mask, image_grid_thw, video_grid_thw, config):
    """Qwen2-VL's 3 x batch x length M-RoPE position ids, by transformers 4.46's ``get_rope_index``
    rule (module doc)."""
    import torch

    merge = config.vision_config.spatial_merge_size
    grids = {config.image_token_id: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
             config.video_token_id: iter(video_grid_thw.tolist() if video_grid_thw is not None else [])}
    positions = torch.ones(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)
    for row, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.bool())):
        tokens = [t for t, keep in zip(ids, mask.tolist()) if keep]
        parts, start, next_pos = [], 0, 0
        while start < len(tokens):
            # The next vision block: a run of image or video placeholder tokens.
            at = next((i for i in range(start, len(tokens)) if tokens[i] in grids), len(tokens))
            if at > start:
                parts.append(torch.arange(at - start).expand(3, -1) + next_pos)
                next_pos += at - start
            if at == len(tokens):
                break
            t, h, w = next(grids[tokens[at]])
            h, w = h // merge, w // merge
            grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"))
            parts.append(grid.reshape(3, -1) + next_pos)
            next_pos = int(parts[-1].max()) + 1
            start = at + t * h * w
        positions[:, row, mask] = torch.cat(parts, dim=1).to(positions.device)
    return positions


def flat_position_ids(attention_mask):
    """transformers 4.46.0's positions for a forward without ``position_ids``: 0..L-1 on all three
    axes. 4.46 counts from the first column of the batch; ``infer.py`` scores one unpadded
    sequence per call, so here each row counts from its own first token (left padding changes
    nothing) and padding positions stay 1, as in :func:`reference_position_ids`."""
    import torch

    mask = attention_mask.bool()
    flat = (mask.long().cumsum(-1) - 1).masked_fill(~mask, 1)
    return flat.unsqueeze(0).expand(3, -1, -1).contiguous()
