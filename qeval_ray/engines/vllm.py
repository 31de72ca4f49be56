"""The production engine: vLLM's ``AsyncLLM``, fed continuously, one generated token per request.

``SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=<ids>)`` returns the
full-vocabulary log-probs of exactly the tokens asked for. The engine is a *concurrent* one (see
``engines.base``): the score stage awaits many items and several batches at once, so requests of
the next batch enter the engine before the current one drains, and no wave or batch boundary
empties it.

Within one item, the first prompt goes with the pixels and the item's content digest as its
``multi_modal_uuids`` (vLLM then does not hash the pixels again). The item's other prompts (other
aspects, V2S parts) are submitted as soon as the first has been prefilled (with one generated
token, that is when it finishes): they find the media prefix in the prefix cache and the
processed media in vLLM's processor cache, so they carry no pixels (``[None]`` under the same
uuid). If the processor cache has evicted the media meanwhile, such a prompt is sent again with
its pixels.

Why not Ray Data LLM's vLLM stage, which also runs ``AsyncLLM`` with several batches in flight: it
can carry these inputs, but it ends the actor itself on a dead engine (no crash ledger, no
culprit search), drops the cause of wrapped errors, gives failed rows another schema (with the
pixels in them), pickles every row between stages, and offers no hook to order an item's prompts
or to read the engine's state. The actor here keeps those, with the same engine underneath.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
from typing import Sequence

import numpy as np

from qeval_ray.engines.base import Engine, EngineConfig, ScoreRequest, chat_prompt, processor_kwargs


class _CacheMiss(Exception):
    """A prompt sent without pixels found its media evicted from vLLM's processor cache."""


class VLLMEngine(Engine):
    name = "vllm"
    concurrent = True

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        if config.device == "cpu":
            # vLLM-CPU: the engine core's model runs in the engine-core process itself (no extra
            # worker process), and its KV cache needs a size in GiB.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from transformers import AutoProcessor
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

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
            disable_log_stats=True,
        )
        if config.device != "cpu":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.tensor_parallel_size > 1:
            # The actor holds that many GPUs; vLLM's worker processes share them on this node.
            kwargs.update(tensor_parallel_size=config.tensor_parallel_size, distributed_executor_backend="mp")
        if config.max_model_len:
            kwargs["max_model_len"] = config.max_model_len
        if config.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = config.max_num_batched_tokens
        # LLM_CLASS: the batch sizes of offline inference (16k tokens / 1024 sequences on a large
        # GPU), not the 2k / 128 vLLM gives an engine it takes for a server.
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs), usage_context=UsageContext.LLM_CLASS)
        self._request_ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop requests are awaited on
        self._closed = False
        # At process exit vLLM's own finalizers stop the engine core from the main thread; close
        # first (atexit runs the last registered first), on the loop, so nothing reports a failure.
        atexit.register(self.close)

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def close(self) -> None:
        """Shut vLLM down on the event loop it runs on: from any other thread, its output handler
        would see the engine core go and log the shutdown as an engine failure."""
        if self._closed:
            return
        self._closed = True
        loop, self._loop = self._loop, None
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=60)
                return
            except Exception:  # noqa: BLE001 - the loop is going away too: shut down from here
                pass
        self.llm.shutdown()

    async def _shutdown(self) -> None:
        self.llm.shutdown()

    def unfinished_requests(self) -> int:
        """Requests in the engine now (queued or running): what the benchmark samples."""
        return self.llm.output_processor.get_num_unfinished_requests()  # also on vLLM < 0.28

    async def reset_caches(self) -> None:
        await self.llm.reset_prefix_cache()
        await self.llm.reset_mm_cache()

    def is_dead(self) -> bool:
        # Set by vLLM's own monitor thread when the engine-core process exits.
        return not self._closed and bool(self.llm.engine_core.resources.engine_dead)

    def is_fatal(self, error: BaseException) -> bool:
        # vLLM's engine core has died (it raises EngineDeadError from then on).
        return type(error).__name__ == "EngineDeadError" or self.llm.errored or super().is_fatal(error)

    async def item_logprobs(self, requests: Sequence[ScoreRequest], token_ids: Sequence[int]) -> np.ndarray:
        from vllm import SamplingParams

        self._loop = asyncio.get_running_loop()
        sampling = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(token_ids))
        first = await self._logprobs(requests[0], sampling, token_ids, with_pixels=True)
        rest = await asyncio.gather(*(self._logprobs(r, sampling, token_ids, with_pixels=False) for r in requests[1:]))
        return np.array([first, *rest], dtype=np.float64)

    async def _logprobs(self, request: ScoreRequest, sampling, token_ids, with_pixels: bool) -> list[float]:
        cached = not with_pixels and request.media.digest is not None
        try:
            return await self._generate(request, sampling, token_ids, cached)
        except _CacheMiss:
            return await self._generate(request, sampling, token_ids, cached=False)

    async def _generate(self, request: ScoreRequest, sampling, token_ids, cached: bool) -> list[float]:
        from vllm.v1.engine.exceptions import EngineGenerateError

        media = request.media
        # [None], never a bare None: vLLM drops a bare None silently and scores the text alone.
        prompt = {"prompt": chat_prompt(self.processor, request),
                  "multi_modal_data": {media.kind: [None] if cached else media.pixels}}
        if media.digest is not None:
            prompt["multi_modal_uuids"] = {media.kind: media.digest}
        final = None
        try:
            async for output in self.llm.generate(prompt, sampling, request_id=f"q{next(self._request_ids)}"):
                final = output
        except EngineGenerateError as e:
            cause = e.__cause__
            if cached and cause is not None and "cache miss" in str(cause).lower():
                raise _CacheMiss() from e
            raise (cause if cause is not None else e) from None  # the reason, not vLLM's empty wrapper
        completion = final.outputs[0] if final is not None and final.outputs else None
        if completion is None or completion.finish_reason == "error" or not completion.logprobs:
            if cached:  # the engine core no longer holds the media the front-end thought it had
                raise _CacheMiss()
            raise RuntimeError(f"vLLM returned no log-probs (finish reason {getattr(completion, 'finish_reason', None)})")
        step = completion.logprobs[0]
        return [step[t].logprob for t in token_ids]
