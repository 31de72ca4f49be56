"""The whole job on one screen: read -> decode -> score -> write -> summarise -> report.

Each stage lives in the module named after it; this file only wires them into one Ray Data flow.
"""

from __future__ import annotations

import time

import ray
import ray.data

from qeval_ray.config import ScoreConfig
from qeval_ray.decode import DecodeOptions, DecodeStage
from qeval_ray.manifest import open_manifest
from qeval_ray.media import ImageOptions, VideoOptions
from qeval_ray.output import OutputLayout, RunSummary, summarize, write_scores
from qeval_ray.provenance import engine_config, make_provenance
from qeval_ray.report import ReportOptions, make_report
from qeval_ray.schema import decoded_schema, output_schema
from qeval_ray.scoring import ScoreStage, ScoringOptions


def run(config: ScoreConfig) -> RunSummary:
    started = time.time()
    manifest = open_manifest(config.input, config.storage)  # validates; ManifestError before any work
    layout = OutputLayout(config.output, config.storage)
    layout.begin()  # fails fast on an unwritable output; withdraws the old completion marker
    _init_ray(config)
    gpus = config.num_gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    engine = engine_config(config, gpus)
    provenance = make_provenance(config, engine)

    decode = DecodeStage(
        DecodeOptions(
            image=ImageOptions(config.min_pixels, config.max_pixels, config.max_image_pixels),
            video=VideoOptions(config.video_fps, config.video_max_pixels, config.video_decoder),
            max_bytes=config.max_bytes,
            base_dir=manifest.base_dir,
            storage=config.storage,
        ),
        decoded_schema(manifest.schema),
    )
    scoring = ScoringOptions(config.engine, engine, config.aspects, provenance, config.storage)

    ds = manifest.read()
    # Small blocks let decode tasks and scoring actors share the work from the first rows on.
    ds = ds.repartition(target_num_rows_per_block=config.decode_batch_size)
    ds = ds.map_batches(decode, batch_size=config.decode_batch_size, batch_format="pyarrow",
                        udf_modifying_row_count=False)
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={"options": scoring, "schema": output_schema(manifest.schema)},
        # Two batches in flight per actor: the next is queued while one scores, and a pool still
        # spreads a small corpus over all its actors.
        compute=ray.data.ActorPoolStrategy(size=config.concurrency, max_tasks_in_flight_per_actor=2),
        batch_size=config.batch_size, batch_format="pyarrow", udf_modifying_row_count=False,
        num_cpus=config.num_cpus_per_actor, num_gpus=gpus,
    )
    write_scores(ds, layout)
    summary = summarize(layout, manifest, config, provenance, started)
    if config.report and manifest.has_labels:
        make_report(layout.uri, layout.report, ReportOptions(), config.storage, provenance.as_dict())
        summary.report = f"{layout.report}/report.md"
    return summary


def _init_ray(config: ScoreConfig) -> None:
    if not ray.is_initialized():
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = True
