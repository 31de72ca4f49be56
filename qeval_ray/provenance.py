"""What produced the scores, and what a rerun must match to resume: computed once on the driver.

The provenance (scorer model and revision, prompt version, engine, dtype, code) is written on
every output row and into the run summary, so a score file can always be traced to the exact
model and code that made it. The run fingerprint (the settings the scores depend on, plus the
resolved provenance) decides whether a rerun into the same output may resume.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from qeval_ray import __version__, runtime, storage
from qeval_ray.config import ScoreConfig, looks_local, strip_file
from qeval_ray.contracts.schema import Provenance
from qeval_ray.engines.base import ROPE_POSITIONS, EngineConfig


def engine_config(config: ScoreConfig, gpus: float) -> EngineConfig:
    model = strip_file(config.model) if looks_local(config.model) else config.model
    return EngineConfig(
        model=model,
        revision=config.revision,
        dtype=runtime.resolve_dtype(config.dtype, on_gpu=gpus > 0, gpu_default="float16"),  # the reference's
        device="cuda" if gpus > 0 else "cpu",
        max_model_len=config.max_model_len,
        enforce_eager=config.enforce_eager,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_num_batched_tokens=config.max_num_batched_tokens,
        tensor_parallel_size=config.tensor_parallel_size,
        rope_positions=config.rope_positions,
    )


def score_settings(config: ScoreConfig, manifest) -> dict:
    """What the command asks for that the scores depend on (before anything is resolved)."""
    asked = {
        "model": storage.redact(config.model), "revision": config.revision, "engine": config.engine,
        "dtype": config.dtype, "aspects": list(config.aspects),
        "min_pixels": config.min_pixels, "max_pixels": config.max_pixels,
        "max_image_pixels": config.max_image_pixels,
        "video_fps": config.video_fps, "video_max_pixels": config.video_max_pixels,
        "manifest_ids": manifest.ids_digest,
    }
    if config.v2s:  # only when used: outputs made before V2S existed keep their fingerprint
        asked["v2s"] = {"vague_weight": config.v2s_vague_weight, "min_words": config.v2s_min_words}
    if config.rope_positions != ROPE_POSITIONS[0]:  # likewise: default runs keep their fingerprint
        asked["rope_positions"] = config.rope_positions
    return asked


def run_fingerprint(config: ScoreConfig, provenance: Provenance, manifest) -> dict:
    """Everything the scores depend on, resolved; a rerun with another fingerprint must not resume."""
    resolved = {k: v for k, v in provenance.as_dict().items() if k != "code_version"}
    return {**score_settings(config, manifest), **resolved}


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def engine_label(engine: str, rope_positions: str) -> str:
    """The provenance's engine: its name, plus ``+flat-rope`` on scores made with transformers
    4.46.0's flat positions (``--rope-positions flat``), so such rows never pass for default ones."""
    return engine if rope_positions == ROPE_POSITIONS[0] else f"{engine}+{rope_positions}-rope"


def make_provenance(config: ScoreConfig, engine: EngineConfig, scorer_revision: str) -> Provenance:
    """``scorer_revision``: what pins the weights, as ``models.resolve_model`` found it."""
    return Provenance(
        scorer_model=storage.redact(config.model),
        scorer_revision=scorer_revision,
        prompt_version=config.scorer.version,
        engine=engine_label(config.engine, engine.rope_positions),
        dtype=engine.dtype,
        code_version=code_version(),
    )
