"""Scores of this job against the reference's own stack (transformers 4.46.0), on images and clips.

    python scripts/parity.py [--work build/parity] [--write-fixture]

Installs transformers 4.46.0, tokenizers 0.20.3 and huggingface_hub 0.26.1 (``--no-deps``) into
WORK/tf446 (this needs the package index; nothing else is downloaded), builds the tiny model and its
4.46 form, decodes generated items with this job's decoders, and prints per item the largest
difference in rating log-probs and in score between:

  4.46 default     the reference's infer.py: 4.46.0's forward with no position_ids (flat positions)
  4.46 rope        4.46.0 with its own get_rope_index (M-RoPE) positions passed in
  job flat / mrope this job's HF engine, --rope-positions flat / mrope (the default)

``--write-fixture`` also rewrites tests/fixtures/tf446_logprobs.json (the offline tests' copy of
4.46.0's numbers for a few items). Not part of ``make test``: it needs the network once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qeval_ray.engines import load_engine  # noqa: E402
from qeval_ray.engines.base import EngineConfig  # noqa: E402
from qeval_ray.scorers.qeval import RATING_TOKENS, rating_probabilities, score_from_probabilities  # noqa: E402
from qeval_ray.testing import parity  # noqa: E402
from qeval_ray.testing.tiny_model import build  # noqa: E402


def install_tf446(target: Path) -> None:
    if (target / "transformers-4.46.0.dist-info").is_dir():
        return
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip config points at local wheel folders
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(target), *parity.TF446], check=True, env=env)


def score(logprobs: np.ndarray) -> np.ndarray:
    return score_from_probabilities(rating_probabilities(logprobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "build" / "parity"))
    parser.add_argument("--write-fixture", action="store_true", help=f"rewrite {parity.FIXTURE.relative_to(REPO)}")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    install_tf446(work / "tf446")
    model = build(work / "model")
    model446 = parity.to_tf446(model, work / "model-tf446")
    requests = [parity.item_request(item) for item in parity.ITEMS]
    parity.save_requests(requests, work / "requests.npz")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "tf446"), str(REPO)])}
    subprocess.run([sys.executable, "-m", "qeval_ray.testing.parity", "tf446", str(model446),
                    str(work / "requests.npz"), str(work / "tf446.npz")], check=True, env=env, cwd=REPO)
    with np.load(work / "tf446.npz", allow_pickle=False) as arrays:
        ref = {k: arrays[k] for k in arrays.files}

    job = {}
    for mode in ("flat", "mrope"):
        engine = load_engine("hf", EngineConfig(model=str(model), rope_positions=mode))
        job[mode] = np.concatenate([engine.next_token_logprobs([r], engine.token_ids(RATING_TOKENS))
                                    for r in requests])

    pairs = [("4.46 default", ref["tf446"], "job flat", job["flat"]),
             ("4.46 default", ref["tf446"], "job mrope", job["mrope"]),
             ("4.46 rope", ref["tf446_rope"], "job mrope", job["mrope"]),
             ("4.46 default", ref["tf446"], "4.46 explicit flat", ref["tf446_flat_check"])]
    print(f"\nmax |difference| per item: rating log-probs (lp) and score (s); float32, CPU, tiny model "
          f"({len(requests)} items, {time.time() - started:.0f} s)\n")
    header = f"{'item':<22}" + "".join(f"{a + ' vs ' + b:>38}" for a, _, b, _ in pairs)
    print(header)
    rows = {}
    for n, item in enumerate(parity.ITEMS):
        cells = []
        for _, x, _, y in pairs:
            lp = float(np.abs(x[n] - y[n]).max())
            s = float(abs(score(x[n]) - score(y[n])))
            cells.append((lp, s))
        rows[item.id] = cells
        print(f"{item.id:<22}" + "".join(f"{f'lp {lp:.1e}  s {s:.1e}':>38}" for lp, s in cells))
    for kind in ("image", "video"):
        ids = [i.id for i in parity.ITEMS if i.kind == kind]
        print(f"{'max ' + kind:<22}" + "".join(
            f"{f'lp {max(rows[i][c][0] for i in ids):.1e}  s {max(rows[i][c][1] for i in ids):.1e}':>38}"
            for c in range(len(pairs))))
    (work / "table.json").write_text(json.dumps({"pairs": [f"{a} vs {b}" for a, _, b, _ in pairs], "rows": rows},
                                                indent=2))

    if args.write_fixture:
        chosen = [n for n, item in enumerate(parity.ITEMS) if item.id in parity.FIXTURE_ITEMS]
        record = parity.fixture_record([parity.ITEMS[n] for n in chosen],
                                       {k: v[chosen] for k, v in ref.items()}, parity.model_digest(model))
        parity.FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        parity.FIXTURE.write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {parity.FIXTURE.relative_to(REPO)}")


if __name__ == "__main__":
    main()
