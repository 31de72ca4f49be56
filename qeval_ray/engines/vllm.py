"""The production engine: one ``vllm.LLM`` per actor, one generated token per request.

``SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=<ids>)`` returns the
full-vocabulary log-probs of exactly the tokens asked for. Requests about one item share the
media prefix, so prefix caching and the encoder cache compute the vision part once per item.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from qeval_ray.engines.base import Engine, EngineConfig, ScoreRequest, chat_prompt, processor_kwargs


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        if config.device == "cpu":
            # vLLM-CPU runs its engine core in this process (it cannot run as a separate process
            # inside a Ray actor here) and needs a KV-cache size in GiB. On GPUs vLLM's default
            # stands: a separate engine-core process, so media preprocessing overlaps GPU steps.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from transformers import AutoProcessor
        from vllm import LLM

        self.processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
        kwargs = dict(
            model=config.model,
            revision=config.revision,
            tokenizer_revision=config.revision,
            dtype=config.dtype,
            seed=config.seed,
            enable_prefix_caching=True,
            limit_mm_per_prompt={"image": 1, "video": 1},
            enforce_eager=config.enforce_eager,
            mm_processor_kwargs=processor_kwargs(self.processor),
            load_format=config.load_format,
        )
        if config.device != "cpu":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        if config.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = config.max_num_batched_tokens
        self.llm = LLM(**kwargs)

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def reset_caches(self) -> None:
        self.llm.reset_prefix_cache()
        self.llm.reset_mm_cache()

    def is_fatal(self, error: BaseException) -> bool:
        # vLLM's engine core has died (it raises EngineDeadError from then on).
        return type(error).__name__ == "EngineDeadError" or super().is_fatal(error)

    def _vllm_input(self, request: ScoreRequest) -> dict:
        media = request.media
        return {"prompt": chat_prompt(self.processor, request), "multi_modal_data": {media.kind: media.pixels}}

    def next_token_logprobs(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        from vllm import SamplingParams

        sampling = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
        result = np.empty((len(requests), len(token_ids)), dtype=np.float64)
        for wave in _waves(requests):
            outputs = self.llm.generate([self._vllm_input(requests[i]) for i in wave], sampling, use_tqdm=False)
            for i, out in zip(wave, outputs):
                step = out.outputs[0].logprobs[0]
                result[i] = [step[t].logprob for t in token_ids]
        return result


def _waves(requests: Sequence[ScoreRequest]) -> list[list[int]]:
    """Request indices in waves: the first prompt about each media, then the second, ...

    Prompts about one item share everything up to the end of its media. Sent together they would be
    prefilled in the same engine step, each computing that prefix; sent a wave later, the second
    finds the first's prefix in vLLM's prefix cache and computes only its own text.
    """
    waves: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, request in enumerate(requests):
        k = seen.get(id(request.media), 0)
        seen[id(request.media)] = k + 1
        if k == len(waves):
            waves.append([])
        waves[k].append(i)
    return waves
