"""Score a manifest of images/videos with Q-Eval-Score on Ray.

    python jobs/score.py --input MANIFEST --output OUT_DIR [--model ID_OR_PATH] [--engine vllm|hf] ...
    ray job submit --working-dir . -- python jobs/score.py --input ... --output ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qeval_ray.cli import score_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(score_main())
