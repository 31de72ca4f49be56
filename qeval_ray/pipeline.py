"""The score job on one screen: read -> decode -> score -> write -> summary (-> report).

Each stage lives in ``qeval_ray/stages/`` in the module named after it and declares the columns
it needs and adds and the Ray resources it asks for; this file lists them in order and runs them
as one streaming Ray Data flow.
"""

from __future__ import annotations

import math
import time

from qeval_ray import runtime, storage
from qeval_ray.config import ScoreConfig
from qeval_ray.console import Console
from qeval_ray.contracts.layout import OutputLayout, RunState
from qeval_ray.models import resolve_model
from qeval_ray.provenance import engine_config, make_provenance, run_fingerprint, score_settings
from qeval_ray.stages.base import Resources, StageSpec, check_plan
from qeval_ray.stages.crash_ledger import start_crash_ledger
from qeval_ray.stages.progress import start_progress
from qeval_ray.stages.decode import DecodeOptions, decode_stage
from qeval_ray.stages.read import Manifest, open_manifest, read_rows
from qeval_ray.stages.score import ScoringOptions, score_stage
from qeval_ray.stages.write import checkpointing, write_scores
from qeval_ray.summary import RunSummary, summarize
from qeval_ray.testing.faults import FaultInjection

ALREADY_COMPLETE = "already complete; nothing to do (--start-over to score again)"


def score_stages(config: ScoreConfig, manifest: Manifest, scoring: ScoringOptions, actor: Resources) -> list[StageSpec]:
    """The stages between reading the manifest and writing the scores, in order."""
    scorer = config.scorer
    return [
        decode_stage(DecodeOptions(config.image, config.video, config.max_bytes, manifest.base_dir, config.storage),
                     scorer, manifest.schema, batch_size=config.decode_batch_size),
        score_stage(scoring, scorer, manifest.schema, actors=config.concurrency, batch_size=config.batch_size,
                    resources=actor),
    ]


def job_report(layout: OutputLayout, config: ScoreConfig, provenance: dict) -> tuple[str | None, str | None]:
    """The run's correlation report: (its Markdown's uri, None), or (None, why there is none) when
    the labels give nothing to report (e.g. every one missing); the scores stand either way."""
    from qeval_ray.report.options import ReportOptions
    from qeval_ray.report.report import REPORT_MARKDOWN, ReportError, make_report  # scipy, matplotlib: when needed

    try:
        make_report(layout.uri, layout.report, ReportOptions(), config.storage, provenance)
    except ReportError as e:
        return None, str(e)
    return storage.join(layout.report, REPORT_MARKDOWN), None


def run_score_job(config: ScoreConfig, console: Console | None = None) -> RunSummary:
    console = console or Console(verbose=True)
    started = time.time()
    manifest = open_manifest(config.input, config.storage, needs_v2s=config.v2s)  # ManifestError before any work
    layout = OutputLayout(config.output, config.storage, config.state_dir)
    layout.check_writable()  # an output this run could never write stops it now
    settings = score_settings(config, manifest)
    # What the output's own records decide (done already, or made differently) is decided now.
    if layout.check_resumable(settings, config.start_over) is RunState.COMPLETE:
        return RunSummary.of_finished_run(layout, note=ALREADY_COMPLETE)

    # The model's files can be had (or the run stops here, in seconds, before Ray starts).
    model = resolve_model(config.model, config.revision, config.storage)

    console.quiet()  # from here on, Ray's and the libraries' logs go to the run's log folder
    # A local instance needs a CPU for each scoring actor, the checkpoint filter of a resumed run
    # and at least one decode task, or the run would wait forever.
    runtime.start_ray(config.ray_address, local_cpus=math.ceil(config.concurrency * config.actor_resources(True)[0]) + 2,
                      progress_bars=config.verbose)
    actor = Resources(*config.actor_resources(runtime.cluster_has_gpus()))
    engine = engine_config(config, actor.gpus)
    provenance = make_provenance(config, engine, model.revision)
    # The resolved provenance (dtype, model revision) must match too; refused unless start_over.
    if layout.begin(run_fingerprint(config, provenance, manifest), config.start_over, settings) is RunState.COMPLETE:
        return RunSummary.of_finished_run(layout, note=ALREADY_COMPLETE)

    ledger, progress = start_crash_ledger(), start_progress()
    scoring = ScoringOptions(config.engine, engine, provenance, config.storage, crash_ledger=ledger, progress=progress,
                             max_crashes=config.max_crashes, faults=FaultInjection.from_environment(), model=model)
    stages = score_stages(config, manifest, scoring, actor)
    check_plan(stages, manifest.schema.names)
    todo = manifest.num_rows - sum(layout.score_files().values())  # what earlier runs left
    with checkpointing(layout), console.progress(lambda: runtime.get(progress.snapshot), todo,
                                                 config.progress_interval):
        ds = read_rows(manifest, rows_per_block=config.decode_batch_size)
        for stage in stages:
            ds = stage.apply(ds)
        written = write_scores(ds, layout, config.rows_per_file, started)

    summary = summarize(layout, manifest, config, provenance, started, rows_this_run=written,
                        scoring_actor_crashes=runtime.get(ledger.crash_events),
                        scoring_s=runtime.get(progress.snapshot)["scoring_s"])
    if config.report and manifest.has_labels:
        summary.report, summary.no_report = job_report(layout, config, provenance.as_dict())
    elif manifest.has_labels:
        summary.no_report = "--no-report"
    layout.write_summary(summary.to_json())  # _summary.json last: its presence means the run completed
    return summary
