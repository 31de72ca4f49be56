"""The curation's output directory: what it holds, and how a finished curation gets there.

    OUTPUT/pairs.parquet     preference pairs: prompt, chosen, rejected (media uris; TRL's names),
                             chosen_reward, rejected_reward, margin, then ids, ranks, generators
    OUTPUT/pairs.jsonl       the same rows, one JSON object a line
    OUTPUT/kept.parquet      the kept rows: every score column, reward, spread, rank, group_size,
                             group_mean, group_std, advantage
    OUTPUT/curation.json     the rules, counts after each rule, groups, pairs, advantages, the
                             histograms' counts, the input files and the scorer's provenance
    OUTPUT/histograms/*.png  each aspect (and the reward) before and after the curation

Everything is written to a local staging directory first and moved (or uploaded) when complete,
``curation.json`` last: an output with ``curation.json`` is a finished curation. An output that
holds anything else is refused; an earlier curation's files are replaced.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from qeval_ray import storage

PAIRS_PARQUET, PAIRS_JSONL, KEPT, REPORT, HISTOGRAMS = (
    "pairs.parquet", "pairs.jsonl", "kept.parquet", "curation.json", "histograms")
OURS = (PAIRS_PARQUET, PAIRS_JSONL, KEPT, REPORT, HISTOGRAMS)


class CurationOutputError(ValueError):
    """The output cannot hold a curation; the message says why."""


class CurationOutput:
    def __init__(self, uri: str, options: storage.StorageOptions = storage.DEFAULT):
        self.uri = uri.rstrip("/")
        self.fs, self.root = storage.filesystem(self.uri, options)

    def check(self) -> None:
        """Refuse an output that holds something other than an earlier curation (before any work)."""
        try:
            if not self.fs.exists(self.root):
                return
            if not self.fs.isdir(self.root):
                raise CurationOutputError(f"--output {storage.redact(self.uri)} is a file, not a directory")
            names = {posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)}
        except CurationOutputError:
            raise
        except Exception as e:  # noqa: BLE001 - storage libraries raise many types
            raise CurationOutputError(f"cannot read --output {storage.redact(self.uri)}: "
                                      f"{storage.describe_error(e, self.uri)}") from e
        names.discard(posixpath.basename(self.root))  # some stores list a directory's own marker
        if names and REPORT not in names:
            shown = ", ".join(sorted(names)[:3])
            raise CurationOutputError(f"--output {storage.redact(self.uri)} holds files that are not a curation "
                                      f"({shown}{', ...' if len(names) > 3 else ''}): choose a new directory")
        others = sorted(names - set(OURS))
        if others:
            raise CurationOutputError(f"--output {storage.redact(self.uri)} holds files besides an earlier "
                                      f"curation's ({', '.join(others[:3])}): choose a new directory")

    def publish(self, staging: str) -> None:
        """Replace the output's curation with the files in the local directory ``staging``."""
        fs, root = self.fs, self.root
        if fs.exists(posixpath.join(root, REPORT)):
            fs.rm(posixpath.join(root, REPORT))  # no longer a finished curation until the new one is in
        for name in OURS:
            path = posixpath.join(root, name)
            if name != REPORT and fs.exists(path):
                fs.rm(path, recursive=True)
        fs.makedirs(root, exist_ok=True)
        names = sorted(os.listdir(staging), key=lambda n: n == REPORT)  # the report last
        for name in names:
            local = os.path.join(staging, name)
            target = posixpath.join(root, name)
            if storage.is_local(self.uri):
                shutil.move(local, target)
            elif os.path.isdir(local):
                for child in sorted(os.listdir(local)):
                    fs.put_file(os.path.join(local, child), posixpath.join(target, child))
            else:
                fs.put_file(local, target)
