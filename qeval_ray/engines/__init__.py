"""Engines: how a model is run (``vllm`` in production, ``hf`` as the reference's own forward pass)."""

from __future__ import annotations

from qeval_ray.engines.base import Engine, EngineConfig

ENGINE_NAMES = ("vllm", "hf")


def load_engine(name: str, config: EngineConfig) -> Engine:
    """Build the named engine; each engine module imports its heavy libraries only when chosen."""
    if name == "vllm":
        from qeval_ray.engines.vllm import VLLMEngine

        return VLLMEngine(config)
    if name == "hf":
        from qeval_ray.engines.hf import HFEngine

        return HFEngine(config)
    raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
