"""Scores in, RL training data out: filters, a reward expression, top-k, preference pairs, advantages.

    python jobs/curate.py --scores SCORES --output CURATED [--reward '0.6*quality + 0.4*alignment'] ...
    ray job submit --working-dir . -- python jobs/curate.py --scores s3://... --output s3://...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qeval_ray.cli import curate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(curate_main())
