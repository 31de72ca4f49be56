"""Command-line entry points (``jobs/*.py`` call these): parse, run, print, exit with a status.

A user's mistake (a bad option, manifest or output) is one line on stderr and exit status 2;
Ray and the engines are imported only once the command line is known to be valid.
"""

from __future__ import annotations

import logging
import sys

from qeval_ray.config import ConfigError, parse_curate_args, parse_report_args, parse_rewrite_args, parse_score_args
from qeval_ray.contracts.layout import OutputError, RunMismatch
from qeval_ray.stages.read import ManifestError

EXIT_USAGE = 2  # argparse's own code for bad options


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def score_main(argv: list[str] | None = None) -> int:
    _log_to_stderr()
    try:
        config = parse_score_args(argv)
    except ConfigError as e:
        print(f"qeval-ray: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from qeval_ray.console import Console
    from qeval_ray.pipeline import run_score_job  # Ray and the engines load only for a valid run
    from qeval_ray.runtime import stop_ray

    with Console(verbose=config.verbose, log_dir=config.log_dir) as console:
        try:
            summary = run_score_job(config, console)
        except (ConfigError, ManifestError, OutputError, RunMismatch) as e:
            console.line(f"error: {e}")
            return EXIT_USAGE
        finally:
            stop_ray()  # while the logs still go to the log folder: actors log as they shut down
        console.print(summary.format())
    return 0


def v2s_parts_main(argv: list[str] | None = None) -> int:
    _log_to_stderr()
    try:
        config = parse_rewrite_args(argv)
        from qeval_ray.rewrite import run_rewrite_job  # Ray and vLLM load only for a valid run

        summary = run_rewrite_job(config)
    except (ConfigError, ManifestError) as e:
        print(f"qeval-ray v2s parts: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    examples = "".join(f"\n  failed: {e}" for e in summary["error_examples"])
    print(f"qeval-ray v2s parts: {summary['rows']} rows, {summary['rewritten']} long prompts split into parts, "
          f"{summary['failed']} could not be (v2s_rewrite_error says why) by {summary['rewriter']}{examples}\n"
          f"  manifest: {summary['output']}  (score it with jobs/score.py --v2s)")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    from qeval_ray import storage
    from qeval_ray.contracts.layout import OutputLayout
    from qeval_ray.report.report import REPORT_MARKDOWN, ReportError, make_report

    config = parse_report_args(argv)
    try:
        layout = OutputLayout(config.scores, config.storage)
        if layout.is_unfinished() and not config.allow_incomplete:
            print(f"qeval-ray report: error: {storage.redact(config.scores)} has no _summary.json: the run did not "
                  "finish (rerun it to complete, or pass --allow-incomplete)", file=sys.stderr)
            return EXIT_USAGE
        provenance = (layout.read_summary() or {}).get("provenance", {})
        report = make_report(config.scores, config.output, config.report_options, config.storage, provenance)
    except ReportError as e:
        print(f"qeval-ray report: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"qeval-ray report: error: no scores at {storage.redact(config.scores)} ({e})", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - storage libraries raise many types: one line says which problem
        problem = storage.storage_problem(e, config.scores)
        if problem is None:
            raise
        print(f"qeval-ray report: error: cannot read the scores {storage.redact(config.scores)}: {problem}",
              file=sys.stderr)
        return EXIT_USAGE
    print(f"qeval-ray report: {len(report['figures'])} figures, {len(report['plots'])} plots -> "
          f"{storage.join(storage.redact(config.output), REPORT_MARKDOWN)}")
    return 0


def curate_main(argv: list[str] | None = None) -> int:
    try:
        config = parse_curate_args(argv)
        from qeval_ray.curate.job import CurateError, run_curate_job  # duckdb loads only for a valid run

        try:
            result = run_curate_job(config)
        except CurateError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"qeval-ray curate: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(result.format(config.output))
    return 0
