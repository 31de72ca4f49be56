"""One dataclass per job; each job's command line is built from its fields (``qeval_ray.options``).

Every option is checked before any work starts; a bad one stops the job with one
:class:`ConfigError` that lists every problem of the command line and what to do.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from qeval_ray import media
from qeval_ray.storage import DEFAULT_MAX_BYTES, StorageOptions
from qeval_ray.v2s import DEFAULT_VAGUE_WEIGHT, LONG_PROMPT_WORDS, MAX_SPECIFIC, V2SOptions
from qeval_ray.engines import ENGINE_NAMES
from qeval_ray.engines.base import ROPE_POSITIONS
from qeval_ray import __version__
from qeval_ray.options import build_parser, choice_problem, comma_list, did_you_mean, option, parse_config
from qeval_ray.contracts.schema import MEDIA_TYPES
from qeval_ray.curate import rules as curate_rules
from qeval_ray.report.options import MetricOptions, ReportOptions
from qeval_ray.scorers.qeval import ASPECTS, QEvalScorer

DEFAULT_MODEL = "AGI-Eval-Official/Q-Eval-Score"  # the id the Q-Eval-100K release links
DTYPES = ("auto", "float16", "bfloat16", "float32")


class ConfigError(ValueError):
    """An option is wrong; the message says which and what to do."""


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError("invalid options:\n  " + "\n  ".join(problems))


def _at_least_one(config, names) -> list[str]:
    return [f"--{name.replace('_', '-')} must be at least 1" for name in names if getattr(config, name) < 1]


def _io_problems(config) -> list[str]:
    """What every job that reads --input and writes --output checks alike."""
    problems = []
    if config.input.rstrip("/") == config.output.rstrip("/"):
        problems.append("--output must differ from --input")
    if config.s3_endpoint and not config.s3_endpoint.startswith(("http://", "https://")):
        problems.append("--s3-endpoint must be an http:// or https:// URL")
    return problems


_IO, _MODEL, _V2S, _MEDIA, _STORAGE, _RAY, _RUNS, _SHOWN = (
    "input and output", "model", "vague-to-specific (long prompts' alignment in parts)", "media", "storage",
    "ray", "runs", "what the job prints")


@dataclass(frozen=True)
class ScoreConfig:
    input: str = option(group=_IO, help="manifest: parquet/jsonl/csv file, directory or glob (local, file://, s3://, gs://)")
    output: str = option(group=_IO, help="output directory: scores in OUTPUT/scores/, the summary in "
                         "OUTPUT/_summary.json, the report in OUTPUT/_report/")
    state_dir: str | None = option(None, group=_IO, metavar="DIR", help="the run's bookkeeping (run record, "
                                   "checkpoint) (default: .NAME.qeval beside OUTPUT)")
    model: str = option(DEFAULT_MODEL, group=_MODEL, help="the scorer: a Hugging Face id, a local directory or an "
                       "object-storage prefix (checked before Ray starts; fetched once per node)")
    revision: str | None = option(None, group=_MODEL, help="Hugging Face id: the revision (branch, tag or commit) to "
                                  "pin; resolved to its commit on the driver")
    engine: str = option("vllm", group=_MODEL, choices=ENGINE_NAMES, help="scoring engine")
    aspects: tuple[str, ...] = option(ASPECTS, group=_MODEL, parse=comma_list, metavar="LIST",
                                      help=f"comma-separated, of: {', '.join(ASPECTS)}")
    dtype: str = option("auto", group=_MODEL, choices=DTYPES,
                        help="auto: float16 on GPUs (as the reference), float32 on CPU")
    max_model_len: int | None = option(None, group=_MODEL, parse=int, help="vLLM: context length (the model's if not given)")
    enforce_eager: bool = option(False, group=_MODEL, help="vLLM: no CUDA graphs / torch.compile (fast start; use on CPU)")
    gpu_memory_utilization: float = option(0.9, group=_MODEL, help="vLLM: share of GPU memory to use")
    max_num_batched_tokens: int | None = option(None, group=_MODEL, parse=int, help="vLLM: tokens per engine step")
    rope_positions: str = option("mrope", group=_MODEL, choices=ROPE_POSITIONS,
                                 help="HF engine: text positions around media. mrope: Qwen2-VL's M-RoPE, as the "
                                 "model was trained and as vLLM and transformers >= 4.47 compute them; flat: "
                                 "0..L-1 on every axis, as transformers 4.46.0's forward (the reference "
                                 "infer.py's pin) computes them, to reproduce its published numbers")
    tensor_parallel_size: int = option(1, group=_MODEL, help="vLLM: GPUs one engine spans, for models that do not "
                                       "fit one GPU (each scoring actor then asks for that many)")
    # Vague-to-Specific: long prompts' alignment from the manifest's v2s_vague/v2s_specific parts
    v2s: bool = option(False, group=_V2S, help="score the alignment of prompts longer than --v2s-min-words words in "
                       "parts, from the manifest's v2s_vague (text) and v2s_specific (list of texts) columns")
    v2s_vague_weight: float = option(DEFAULT_VAGUE_WEIGHT, group=_V2S, help="alignment = w * vague + (1 - w) * mean(specific)")
    v2s_min_words: int = option(LONG_PROMPT_WORDS, group=_V2S, help="prompts of more words than this are scored in parts (the paper's)")
    min_pixels: int = option(media.DEFAULT_MIN_PIXELS, group=_MEDIA, help="image: smart_resize lower bound")
    max_pixels: int = option(media.DEFAULT_MAX_PIXELS, group=_MEDIA, help="image: smart_resize upper bound (the reference's)")
    max_image_pixels: int = option(media.DEFAULT_MAX_IMAGE_PIXELS, group=_MEDIA,
                                   help="refuse source images larger than this (decompression bombs)")
    video_fps: float = option(media.DEFAULT_VIDEO_FPS, group=_MEDIA, help="video: frames sampled per second (the reference's)")
    video_max_pixels: int = option(media.DEFAULT_VIDEO_MAX_PIXELS, group=_MEDIA, help="video: pixel cap per frame (the reference's)")
    video_decoder: str = option("auto", group=_MEDIA, choices=media.VIDEO_DECODERS,
                                help="auto: PyAV, then decord for what PyAV cannot open")
    max_bytes: int = option(DEFAULT_MAX_BYTES, group=_MEDIA, help="refuse media objects larger than this")
    s3_endpoint: str | None = option(None, group=_STORAGE, metavar="URL",
                                     help="S3-compatible endpoint (else AWS_ENDPOINT_URL, else AWS)")
    fetch_attempts: int = option(StorageOptions.attempts, group=_STORAGE,
                                 help="tries per media object on transient storage errors")
    concurrency: int = option(1, group=_RAY, help="scoring actors (one engine each)")
    num_gpus_per_actor: float | None = option(None, group=_RAY, parse=float, help="GPUs per scoring actor "
                                              "(--tensor-parallel-size if the cluster has GPUs, else 0)")
    num_cpus_per_actor: float | None = option(None, group=_RAY, parse=float, help="CPUs reserved per scoring actor, "
                                              "fractions allowed (2 on GPU clusters: vLLM's front-end and engine "
                                              "core are two busy processes; else 1)")
    batch_size: int = option(16, group=_RAY, help="items per scoring call (every prompt of each)")
    decode_batch_size: int = option(4, group=_RAY, help="items per decode task")
    ray_address: str | None = option(None, group=_RAY, metavar="ADDRESS",
                                     help="Ray cluster address (else RAY_ADDRESS, else a local instance)")
    start_over: bool = option(False, group=_RUNS, help="replace what --output holds; by default a rerun resumes an "
                              "unfinished run, and refuses an output made with other options or another manifest")
    rows_per_file: int = option(2000, group=_RUNS, help="rows per score file: a killed run loses at most the "
                                "unwritten files' work")
    max_crashes: int = option(3, group=_RUNS, help="an item that crashes a scoring actor this many times becomes "
                              "a score_error row")
    report: bool = option(True, group=_RUNS, flag="--no-report",
                          help="skip the correlation report (made when the manifest has quality_mos/alignment_mos)")
    verbose: bool = option(False, group=_SHOWN, help="show Ray's, Ray Data's and the engines' own logs and "
                           "progress bars here, instead of in the run's log folder")
    progress_interval: float = option(30.0, group=_SHOWN, help="seconds between progress lines when the output "
                                      "is not a terminal (in a terminal the line is redrawn every second)")
    log_dir: str | None = option(None, group=_SHOWN, metavar="DIR", help="the run's log folder (default: a new "
                                 "folder under the system's temporary directory; its path is printed)")

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(s3_endpoint=self.s3_endpoint, attempts=self.fetch_attempts)

    @property
    def v2s_options(self) -> V2SOptions | None:
        return V2SOptions(self.v2s_vague_weight, self.v2s_min_words) if self.v2s else None

    @property
    def image(self) -> media.ImageOptions:
        return media.ImageOptions(self.min_pixels, self.max_pixels, self.max_image_pixels)

    @property
    def video(self) -> media.VideoOptions:
        return media.VideoOptions(self.video_fps, self.video_max_pixels, self.video_decoder)

    def actor_resources(self, cluster_has_gpus: bool) -> tuple[float, float]:
        """(CPUs, GPUs) one scoring actor asks for, the defaults resolved for the cluster."""
        gpus = self.num_gpus_per_actor
        if gpus is None:
            gpus = float(self.tensor_parallel_size) if cluster_has_gpus else 0.0
        if gpus < self.tensor_parallel_size > 1:
            raise ConfigError(f"--tensor-parallel-size {self.tensor_parallel_size} needs that many GPUs per scoring "
                              f"actor; it has {gpus:g} ({'--num-gpus-per-actor' if cluster_has_gpus else 'no GPUs here'})")
        cpus = self.num_cpus_per_actor
        if cpus is None:
            cpus = 2.0 if gpus > 0 else 1.0
        return cpus, gpus

    @property
    def scorer(self) -> QEvalScorer:
        return QEvalScorer(self.aspects, self.v2s_options)

    def validate(self) -> "ScoreConfig":
        problems = []
        problems += [p for p in (choice_problem("--engine", self.engine, ENGINE_NAMES),
                                 choice_problem("--dtype", self.dtype, DTYPES),
                                 choice_problem("--video-decoder", self.video_decoder, media.VIDEO_DECODERS),
                                 choice_problem("--rope-positions", self.rope_positions, ROPE_POSITIONS)) if p]
        if self.rope_positions != ROPE_POSITIONS[0] and self.engine != "hf":
            problems.append(f"--rope-positions {self.rope_positions} reproduces transformers 4.46.0's forward with "
                            "the HF engine only (vLLM always computes M-RoPE): add --engine hf")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            problems.append("--engine vllm: vLLM is not installed here (pip install vllm), or use --engine hf")
        unknown = [a for a in self.aspects if a not in ASPECTS]
        if unknown or not self.aspects:
            named = "; ".join(f"{a!r} is not an aspect{did_you_mean(a, ASPECTS)}" for a in unknown) or "none given"
            problems.append(f"--aspects {','.join(self.aspects)!r}: {named}; choose from {', '.join(ASPECTS)}")
        if len(set(self.aspects)) != len(self.aspects):
            problems.append(f"--aspects {','.join(self.aspects)!r} names an aspect twice")
        if self.v2s and "alignment" not in self.aspects:
            problems.append("--v2s scores alignment in parts: it needs alignment in --aspects")
        if not 0 <= self.v2s_vague_weight <= 1:
            problems.append("--v2s-vague-weight must be in [0, 1] (the specific parts get the rest)")
        if self.v2s_min_words < 0:
            problems.append("--v2s-min-words must not be negative")
        problems += _at_least_one(self, ("min_pixels", "max_pixels", "max_image_pixels", "video_max_pixels",
                                         "max_bytes", "concurrency", "batch_size", "decode_batch_size",
                                         "fetch_attempts", "rows_per_file", "max_crashes"))
        if self.min_pixels > self.max_pixels:
            problems.append("--min-pixels must not exceed --max-pixels")
        if not self.video_fps > 0:
            problems.append("--video-fps must be positive")
        if self.tensor_parallel_size < 1:
            problems.append("--tensor-parallel-size must be at least 1")
        elif self.tensor_parallel_size > 1 and self.engine != "vllm":
            problems.append("--tensor-parallel-size splits a model over GPUs with vLLM: use --engine vllm")
        if any(v is not None and v < 0 for v in (self.num_cpus_per_actor, self.num_gpus_per_actor)):
            problems.append("--num-cpus-per-actor and --num-gpus-per-actor must not be negative")
        if not self.progress_interval > 0:
            problems.append("--progress-interval must be positive")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append("--gpu-memory-utilization must be in (0, 1]")
        if looks_local(self.model) and not os.path.isdir(strip_file(self.model)):
            problems.append(f"--model {self.model!r}: no such model directory (give a local directory or a Hugging Face id)")
        _raise_problems(problems + _io_problems(self))
        return self


def strip_file(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def looks_local(model: str) -> bool:
    """A path (absolute, relative with ./ or ../, file://, or existing) rather than a hub id."""
    return model.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(model)


SCORE_EXAMPLE = """example (8 GPU actors, one engine each, reading and writing object storage):
  python jobs/score.py --input s3://bucket/manifests/2026-12-02.parquet \\
      --output s3://bucket/scores/2026-12-02/ --concurrency 8
  (on a cluster: ray job submit --working-dir . -- python jobs/score.py ...; rerun the same command to
  resume an interrupted run)"""


def score_parser():
    return build_parser(
        ScoreConfig, prog="jobs/score.py",
        description="Score images and videos for visual quality and text alignment with Q-Eval-Score on Ray.",
        epilog=SCORE_EXAMPLE, groups=(_IO, _MODEL, _MEDIA, _V2S, _STORAGE, _RAY, _RUNS, _SHOWN),
        version=f"qeval-ray {__version__}")


def parse_score_args(argv: list[str] | None = None) -> ScoreConfig:
    return parse_config(ScoreConfig, score_parser(), argv).validate()


# --- the correlation report (jobs/report.py) -----------------------------------------------------


_FIGURES = "figures"


@dataclass(frozen=True)
class ReportConfig:
    scores: str = option(group=_IO, metavar="DIR", help="the score job's output directory (or its scores/ directory)")
    output: str = option(group=_IO, metavar="DIR", help="report directory (report.json, report.md, *.png)")
    labels: str | None = option(None, group=_IO, metavar="FILE", help="parquet/csv/jsonl with id and "
                                "quality_mos/alignment_mos, joined on id where the scores carry no label")
    allow_incomplete: bool = option(False, group=_IO, help="report on scores of an unfinished run")
    by: str = option(ReportOptions.group_by, group=_FIGURES, metavar="COLUMN",
                     help="the generator column for model-level figures")
    bootstrap: int = option(MetricOptions.bootstrap, group=_FIGURES, help="bootstrap resamples per interval (0: none)")
    bootstrap_max_n: int = option(MetricOptions.bootstrap_max_n, group=_FIGURES,
                                  help="above this many pairs, Fisher-z intervals")
    seed: int = option(MetricOptions.seed, group=_FIGURES, help="bootstrap seed")
    long_prompt_words: int = option(LONG_PROMPT_WORDS, group=_FIGURES, help="the long-prompt subset: more words than this")
    plots: bool = option(True, group=_FIGURES, flag="--no-plots", help="skip the PNG plots")
    s3_endpoint: str | None = option(None, group=_STORAGE, metavar="URL",
                                     help="S3-compatible endpoint (else AWS_ENDPOINT_URL, else AWS)")

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(s3_endpoint=self.s3_endpoint)

    @property
    def report_options(self) -> ReportOptions:
        return ReportOptions(group_by=self.by, long_prompt_words=self.long_prompt_words, labels=self.labels,
                             plots=self.plots, metrics=MetricOptions(bootstrap=self.bootstrap, seed=self.seed,
                                                                     bootstrap_max_n=self.bootstrap_max_n))


REPORT_EXAMPLE = """example (a finished run's scores, human labels from another file, figures per generator):
  python jobs/report.py --scores s3://bucket/scores/2026-12-02/ --labels s3://bucket/labels/mos.parquet \\
      --by model --output s3://bucket/reports/2026-12-02/"""


def report_parser():
    return build_parser(
        ReportConfig, prog="jobs/report.py",
        description="Correlation report (SRCC, KRCC, PLCC, logistic fit, bootstrap CIs) of scores against MOS.",
        epilog=REPORT_EXAMPLE, groups=(_IO, _FIGURES, _STORAGE), version=f"qeval-ray {__version__}")


def parse_report_args(argv: list[str] | None = None) -> ReportConfig:
    return parse_config(ReportConfig, report_parser(), argv)


# --- the V2S rewrite (jobs/v2s_parts.py) ---------------------------------------------------------

DEFAULT_REWRITER = "Qwen/Qwen2.5-7B-Instruct"


@dataclass(frozen=True)
class RewriteConfig:
    input: str = option(help="manifest: parquet/jsonl/csv file, directory or glob")
    output: str = option(help="a new directory: the manifest with v2s_* columns, as parquet")
    model: str = option(DEFAULT_REWRITER, help="instruction LLM: Hugging Face id or local directory")
    min_words: int = option(LONG_PROMPT_WORDS, help="rewrite prompts of more words than this")
    max_specific: int = option(6, help="at most this many specific parts per prompt")
    max_part_chars: int = option(300, help="at most this many characters per part")
    max_tokens: int = option(1024, help="tokens per answer")
    redo: bool = option(False, help="rewrite rows that already have parts")
    concurrency: int = option(1, help="LLM engines (one GPU each)")
    batch_size: int = option(32, help="prompts per engine batch")
    dtype: str = option("auto", choices=DTYPES, help="auto: the model's own on GPUs, float32 on CPU")
    max_model_len: int | None = option(None, parse=int, help="vLLM: context length")
    enforce_eager: bool = option(False, help="vLLM: no CUDA graphs (fast start; use on CPU)")
    s3_endpoint: str | None = option(None, metavar="URL", help="S3-compatible endpoint URL")
    ray_address: str | None = option(None, metavar="ADDRESS", help="Ray cluster address (else RAY_ADDRESS, else local)")

    def validate(self) -> "RewriteConfig":
        problems = _at_least_one(self, ("concurrency", "batch_size", "max_tokens", "max_specific", "max_part_chars"))
        if self.max_specific > MAX_SPECIFIC:
            problems.append(f"--max-specific must not exceed {MAX_SPECIFIC} (what the score job accepts)")
        if self.min_words < 0:
            problems.append("--min-words must not be negative")
        if self.dtype not in DTYPES:
            problems.append(f"--dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")
        _raise_problems(problems + _io_problems(self))
        return self

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(s3_endpoint=self.s3_endpoint)


def parse_rewrite_args(argv: list[str] | None = None) -> RewriteConfig:
    parser = build_parser(RewriteConfig, prog="jobs/v2s_parts.py", description=(
        "Write the Vague-to-Specific parts of a manifest's long prompts with an instruction LLM "
        "(vLLM through Ray Data), for jobs/score.py --v2s."))
    return parse_config(RewriteConfig, parser, argv).validate()


# --- RL curation (jobs/curate.py) -----------------------------------------------------------------

_C_IO, _C_REWARD, _C_FILTERS, _C_GROUPS, _C_RUN = (
    "input and output", "reward", "filters (applied in this order, each counted)",
    "groups: top-k, preference pairs, advantages", "run")


@dataclass(frozen=True)
class CurateConfig:
    scores: str = option(group=_C_IO, help="the score job's output directory (or its scores/ directory, a "
                         "directory of score parquet files, or a glob); local, file://, s3://, gs://")
    output: str = option(group=_C_IO, help="a new directory (or an earlier curation's, whose files are "
                         "replaced): pairs.parquet, pairs.jsonl, kept.parquet, curation.json, histograms/")
    s3_endpoint: str | None = option(None, group=_C_IO, metavar="URL", help="S3-compatible endpoint URL")
    reward: str = option(curate_rules.DEFAULT_REWARD, group=_C_REWARD, metavar="EXPRESSION",
                         help="the reward: numbers, score columns, + - * /, min(...), max(...), parentheses, "
                         "e.g. '0.6*quality + 0.4*alignment' or 'min(quality, alignment)'")
    media_type: tuple[str, ...] = option((), group=_C_FILTERS, parse=comma_list, metavar="LIST",
                                         shown_default="all", help="keep these media types (image, video)")
    generators: tuple[str, ...] = option((), group=_C_FILTERS, parse=comma_list, metavar="LIST",
                                         shown_default="all", help="keep rows of these generators")
    generator_column: str = option("model", group=_C_FILTERS, metavar="COLUMN",
                                   help="the generator column (--generators, per-generator quantiles)")
    max_std: float | None = option(None, group=_C_FILTERS, parse=float, help="drop rows whose spread "
                                   "(quality_std / alignment_std, of the aspects the reward reads) exceeds this")
    min: tuple = option((), group=_C_FILTERS, parse=curate_rules.parse_thresholds, metavar="COL=V,...",
                        shown_default="none", help="lower bounds: COLUMN=NUMBER (absolute) or COLUMN=qP (the "
                        "per-generator quantile P), e.g. 'quality=0.5,alignment=q0.25'; COLUMN may be reward")
    max: tuple = option((), group=_C_FILTERS, parse=curate_rules.parse_thresholds, metavar="COL=V,...",
                        shown_default="none", help="upper bounds, as --min, e.g. 'quality_std=q0.9'")
    group_by: tuple[str, ...] = option(("prompt",), group=_C_GROUPS, parse=comma_list, metavar="LIST",
                                       help="columns whose equal values form a group (N generations per prompt)")
    top_k: int = option(0, group=_C_GROUPS, help="keep the k best rows of each group in kept.parquet, by reward "
                        "(ties: the smaller id first); 0 keeps every row")
    pairs: str = option("all", group=_C_GROUPS, choices=curate_rules.PAIR_MODES,
                        help="preference pairs per group: every better/worse pair, the best against the worst, "
                        "or neighbours by rank")
    min_margin: float = option(0.0, group=_C_GROUPS, help="a pair's reward margin must be at least this (and "
                               "above 0: equal rewards make no pair)")
    max_pairs_per_group: int = option(0, group=_C_GROUPS, help="at most this many pairs per group, the largest "
                                      "margins first; 0: no cap")
    pair_max_std: float | None = option(None, group=_C_GROUPS, parse=float, help="leave out pairs with a member "
                                        "whose spread exceeds this")
    advantage_std: str = option("population", group=_C_GROUPS, choices=curate_rules.STD_KINDS,
                                help="the group std that divides advantages: population (numpy's default, ddof 0) "
                                "or sample (torch's default, ddof 1, as TRL's GRPOTrainer)")
    allow_incomplete: bool = option(False, group=_C_IO, help="curate the scores of an unfinished score run")
    plots: bool = option(True, group=_C_RUN, flag="--no-plots", help="skip the PNG histograms")
    bins: int = option(20, group=_C_RUN, help="histogram bins")
    memory_limit: str = option("2GB", group=_C_RUN, metavar="SIZE", help="duckdb's memory limit; "
                               "beyond it the plan spills to disk")
    threads: int | None = option(None, group=_C_RUN, parse=int, help="duckdb threads (default: every core)")

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(s3_endpoint=self.s3_endpoint)

    def validate(self) -> "CurateConfig":
        problems = []
        bad_media = [m for m in self.media_type if m not in MEDIA_TYPES]
        if bad_media:
            problems.append(f"--media-type {','.join(bad_media)!r}: choose from {', '.join(MEDIA_TYPES)}")
        p = choice_problem("--pairs", self.pairs, curate_rules.PAIR_MODES)
        problems += [p] if p else []
        p = choice_problem("--advantage-std", self.advantage_std, curate_rules.STD_KINDS)
        problems += [p] if p else []
        if self.top_k < 0:
            problems.append("--top-k must not be negative (0 keeps every row)")
        if self.max_pairs_per_group < 0:
            problems.append("--max-pairs-per-group must not be negative (0: no cap)")
        if self.min_margin < 0 or self.min_margin != self.min_margin:
            problems.append("--min-margin must not be negative")
        for flag, value in (("--max-std", self.max_std), ("--pair-max-std", self.pair_max_std)):
            if value is not None and not value >= 0:
                problems.append(f"{flag} must not be negative")
        if not self.group_by:
            problems.append("--group-by needs at least one column")
        if self.bins < 1:
            problems.append("--bins must be at least 1")
        if self.threads is not None and self.threads < 1:
            problems.append("--threads must be at least 1")
        if not curate_rules.valid_memory_limit(self.memory_limit):
            problems.append(f"--memory-limit {self.memory_limit!r}: give a size such as 2GB or 500MB")
        if self.scores.rstrip("/") == self.output.rstrip("/"):
            problems.append("--output must differ from --scores")
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            problems.append("--s3-endpoint must be an http:// or https:// URL")
        _raise_problems(problems)
        return self


CURATE_EXAMPLE = """example (pairs for preference training and GRPO-style advantages from one score run):
  python jobs/curate.py --scores s3://bucket/scores/2026-12-02/ --output s3://bucket/curated/2026-12-02/ \\
      --reward '0.6*quality + 0.4*alignment' --min 'alignment=q0.1' --max-std 0.8 \\
      --pairs best-vs-worst --min-margin 0.1 --top-k 2"""


def parse_curate_args(argv: list[str] | None = None) -> CurateConfig:
    parser = build_parser(
        CurateConfig, prog="jobs/curate.py",
        description="Turn scores into RL training data: filters, a reward expression, top-k per group, "
        "preference pairs (TRL's prompt/chosen/rejected) and group-normalised advantages, with a report.",
        epilog=CURATE_EXAMPLE, groups=(_C_IO, _C_REWARD, _C_FILTERS, _C_GROUPS, _C_RUN),
        version=f"qeval-ray {__version__}")
    return parse_config(CurateConfig, parser, argv).validate()
