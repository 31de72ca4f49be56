"""The curation's rules as data: what a command line asks for, checked against the scores' columns.

Rows go through the filters in a fixed order, and every rule's drops are counted:

1. ``status``: rows whose status is not ``ok`` (counted per status);
2. ``media_type`` (``--media-type``), 3. ``generator`` (``--generators``);
4. ``missing``: rows without a value in a column the reward, a bound or the grouping reads;
5. ``reward``: rows whose reward is not a finite number (a division by zero);
6. ``max_std``: rows whose spread exceeds ``--max-std``;
7. the bounds, ``--min`` then ``--max``, in the order given. A quantile bound (``quality=q0.25``) is
   the generator's own quantile (linear interpolation, ``quantile_cont``) over the rows that
   passed rules 1-6, computed for every bound on that same population before any bound applies.

The survivors form the groups (``--group-by``), in which rows are ranked by reward, descending,
ties broken by id, ascending.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

DEFAULT_REWARD = "0.5*quality + 0.5*alignment"
PAIR_MODES = ("all", "best-vs-worst", "adjacent", "none")
STD_KINDS = ("population", "sample")
REWARD = "reward"  # the reward's column in kept.parquet (and a name --min/--max may bound)
TIE_RULE = "reward descending, then id ascending"
# A group whose rewards' std is at most this (times 1 + |mean|) has no spread: float noise is not
# a preference. Its advantages are 0.
ZERO_SPREAD = 1e-12


class RuleError(ValueError):
    """A rule cannot be applied to these scores; the message says which and why."""


@dataclass(frozen=True)
class Threshold:
    column: str
    value: float  # the bound itself, or the quantile's level in [0, 1]
    quantile: bool  # a per-generator quantile rather than an absolute bound

    def text(self) -> str:
        return f"{self.column}=q{self.value!r}" if self.quantile else f"{self.column}={self.value!r}"


_THRESHOLD = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(q?)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_thresholds(text: str) -> tuple[Threshold, ...]:
    """``quality=0.5,alignment=q0.25`` -> two thresholds (argparse's type for --min and --max)."""
    out = []
    for item in (part for part in text.split(",") if part.strip()):
        match = _THRESHOLD.match(item)
        if not match:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: write COLUMN=NUMBER or COLUMN=qLEVEL "
                                             "(e.g. quality=0.5, alignment=q0.25)")
        column, q, number = match.groups()
        value = float(number)
        if q and not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: a quantile's level is in [0, 1]")
        out.append(Threshold(column, value, bool(q)))
    return tuple(out)


_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


def valid_memory_limit(text: str) -> bool:
    return bool(_SIZE.match(text))
