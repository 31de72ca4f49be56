"""Command-line entry points (``jobs/*.py`` call these): parse, run, print, exit with a status."""

from __future__ import annotations

import logging
import sys

from qeval_ray.config import ConfigError, parse_score_args
from qeval_ray.manifest import ManifestError
from qeval_ray.output import OutputError

EXIT_USAGE = 2  # argparse's own code for bad options


def score_main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_score_args(argv)
        from qeval_ray.pipeline import run  # Ray and the engines load only for a valid run

        summary = run(config)
    except (ConfigError, ManifestError, OutputError) as e:
        print(f"qeval-ray: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(summary.format())
    return 0
