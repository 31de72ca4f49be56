"""Correlation report from a score directory (and, optionally, a labels file).

    python jobs/report.py --scores OUT_DIR [--labels LABELS] [--by model] --output REPORT_DIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qeval_ray.cli import report_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(report_main())
