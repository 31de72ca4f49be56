"""The scorer seam: what is computed about one item, independent of how a model is run.

A scorer says which prompts an item needs (each becomes one engine request with the item's
media, media first), which next tokens' log-probs it reads, and how the engine's answers become
output columns. The score stage runs any scorer on any engine; engines know nothing of scorers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Mapping

import numpy as np
import pyarrow as pa

class Scorer(ABC):
    """One way of scoring an item. Instances are small and picklable: Ray ships them to workers."""

    name: ClassVar[str]
    version: ClassVar[str]  # the prompts' version: scores of different versions are not comparable

    @abstractmethod
    def fields(self) -> list[pa.Field]:
        """The output columns this scorer adds, typed (null where a row is not scored)."""

    @abstractmethod
    def inputs(self) -> tuple[str, ...]:
        """The manifest columns :meth:`refuse` and :meth:`prompts` read."""

    @property
    @abstractmethod
    def tokens(self) -> tuple[str, ...]:
        """The words whose next-token log-probs are read, one column of answers each."""

    def refuse(self, row: Mapping) -> str | None:
        """Why ``row`` cannot be scored (checked before its media is fetched), or None."""
        return None

    @abstractmethod
    def prompts(self, row: Mapping, media_type: str) -> dict[str, list[str]]:
        """The user texts to ask about the item, grouped by what they score (e.g. aspect)."""

    @abstractmethod
    def columns(self, answers: dict[str, np.ndarray]) -> dict[str, object]:
        """One item's answers (per group of :meth:`prompts`: prompts x tokens log-probs, in order)
        -> its values of :meth:`fields`."""
