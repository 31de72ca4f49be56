"""The report's options (no heavy imports: the jobs' command lines are built from these defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from qeval_ray.v2s import LONG_PROMPT_WORDS


@dataclass(frozen=True)
class MetricOptions:
    bootstrap: int = 1000  # resamples per interval (0: no intervals)
    seed: int = 0
    confidence: float = 0.95
    bootstrap_max_n: int = 5_000  # above this many pairs: Fisher-z intervals


@dataclass(frozen=True)
class ReportOptions:
    group_by: str = "model"  # the generator column for model-level figures
    long_prompt_words: int = LONG_PROMPT_WORDS
    labels: str | None = None  # a file of id + label columns, joined where scores lack them
    metrics: MetricOptions = field(default_factory=MetricOptions)
    plots: bool = True
