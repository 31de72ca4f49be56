"""The V2S rewrite, a job of its own before scoring: long prompts -> a vague summary + specific parts.

``jobs/v2s_parts.py`` reads a manifest and writes the same manifest with the ``v2s_vague`` /
``v2s_specific`` columns that ``jobs/score.py --v2s`` scores (see :mod:`qeval_ray.v2s`). An
instruction LLM writes the parts through Ray Data's LLM processor (vLLM actors, batching, retries);
its answers are held to a JSON schema (at most ``max_specific`` parts of at most ``max_part_chars``
characters), so every answer parses. Relative media paths are written resolved, since the output
manifest lives elsewhere. Rows in = rows out: a short prompt, a row that already has parts
and a row whose answer cannot be used are written unchanged (the reason in ``v2s_rewrite_error``), and
the output is read back as a manifest whose ids must equal the input's.
"""

from __future__ import annotations

import json
from typing import Final

import pyarrow as pa

from qeval_ray import runtime, storage, v2s
from qeval_ray.config import ConfigError, RewriteConfig
from qeval_ray.contracts.schema import PROMPT, URI, V2S_SPECIFIC, V2S_VAGUE, conform
from qeval_ray.stages.base import RowAccountingError
from qeval_ray.stages.read import conform_manifest, open_manifest

REWRITE_ERROR = "v2s_rewrite_error"  # why a long prompt got no parts (null where it got them)
REWRITER = "v2s_rewriter"  # the model and instruction version that wrote a row's parts
_INFERENCE_ERROR = "__inference_error__"  # Ray Data LLM's column for a request the engine failed
# Ray Data LLM reads some row keys itself ("model" names a LoRA adapter, "prompt" is the templated
# text): the manifest's columns travel through it under this prefix.
_PASSTHROUGH_PREFIX = "qeval__"

# The instruction that asks an LLM for a long prompt's Vague-to-Specific parts. The paper's own
# rewriting prompt is not released: this wording is the project's. Parts written with another
# wording carry another V2S_REWRITE_VERSION in the output.
V2S_REWRITE_VERSION: Final = "qeval-ray-v2s-v1"
V2S_REWRITE_INSTRUCTION: Final = (
    "Split the prompt below, written for an image or video generator, into parts for checking how"
    " closely a generated image or video follows it. Answer with JSON only:\n"
    '- "vague": one short sentence naming the main subject and scene of the prompt;\n'
    '- "specific": up to {max_specific} short sentences, each stating one concrete detail of the prompt'
    " (an object, an attribute, an action, a relation or a style), together covering all of its details.\n"
    "Use only what the prompt says.\n\n"
    'Prompt: "{prompt}"'
)


def answer_schema(config: RewriteConfig) -> dict:
    """The JSON the LLM must answer with: vague text, and 1..max_specific specific texts."""
    text = {"type": "string", "minLength": 1, "maxLength": config.max_part_chars}
    return {
        "type": "object",
        "properties": {"vague": text, "specific": {"type": "array", "items": text, "minItems": 1,
                                                   "maxItems": config.max_specific}},
        "required": ["vague", "specific"],
        "additionalProperties": False,
    }


def needs_parts(row: dict, config: RewriteConfig) -> bool:
    prompt = row.get(PROMPT)
    if not prompt or v2s.word_count(prompt) <= config.min_words:
        return False
    return config.redo or not (row.get(V2S_VAGUE) or row.get(V2S_SPECIFIC))


def read_answer(text: str | None, prompt: str, cut_off: bool = False) -> tuple[str | None, list[str] | None, str | None]:
    """The LLM's answer -> (vague, specific, None), or (None, None, why it cannot be used).
    ``cut_off``: the answer used all of --max-tokens."""
    try:
        answer = json.loads(text or "", strict=False)  # control characters inside strings are harmless
        vague, specific = answer["vague"], answer["specific"]
        if not isinstance(vague, str) or not isinstance(specific, list):
            raise TypeError("vague must be text and specific a list of texts")
        v2s.parts(prompt, vague, specific, v2s.V2SOptions(min_words=0))  # what the score job checks
    except json.JSONDecodeError as e:
        why = "it was cut off at --max-tokens" if cut_off else f"{e}"
        return None, None, f"the answer is not complete JSON: {why}"
    except (KeyError, TypeError, v2s.V2SError) as e:
        return None, None, f"the answer cannot be used: {type(e).__name__}: {e}"
    return vague, [str(s) for s in specific], None


def _output_schema(manifest_schema: pa.Schema) -> pa.Schema:
    ours = [pa.field(V2S_VAGUE, pa.string()), pa.field(V2S_SPECIFIC, pa.list_(pa.string())),
            pa.field(REWRITER, pa.string()), pa.field(REWRITE_ERROR, pa.string())]
    names = {f.name for f in ours}
    return pa.schema([f for f in manifest_schema if f.name not in names] + ours)


class _ReadAnswers:
    """The LLM's rows -> the output manifest's rows, each answer read and checked."""

    def __init__(self, schema: pa.Schema, rewriter: str, max_tokens: int):
        self.schema, self.rewriter, self.max_tokens = schema, rewriter, max_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            out = {name: row.get(_PASSTHROUGH_PREFIX + name) for name in self.schema.names}
            error = row.get(_INFERENCE_ERROR) or None
            if error:
                vague, specific, error = None, None, f"the LLM failed on this prompt: {error}"
            else:
                cut_off = (row.get("num_generated_tokens") or 0) >= self.max_tokens
                vague, specific, error = read_answer(row.get("generated_text"), out[PROMPT], cut_off)
            out.update({V2S_VAGUE: vague, V2S_SPECIFIC: specific, REWRITER: self.rewriter, REWRITE_ERROR: error})
            rows.append(out)
        return pa.Table.from_pylist(rows, schema=self.schema)


def run_rewrite_job(config: RewriteConfig) -> dict:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    manifest = open_manifest(config.input, config.storage)  # ManifestError before any work
    fs, out_path = storage.filesystem(config.output, config.storage)
    if fs.exists(out_path) and fs.ls(out_path):
        raise ConfigError(f"--output {storage.redact(config.output)} is not empty; choose another or delete it")
    # Ray Data LLM runs chat-template, tokenize, engine and detokenize actors per engine, each
    # asking for a CPU, besides the read and write tasks.
    runtime.start_ray(config.ray_address, local_cpus=5 * config.concurrency + 3)
    gpus = runtime.cluster_has_gpus()
    schema = _output_schema(manifest.schema)
    rewriter = f"{storage.redact(config.model)} ({V2S_REWRITE_VERSION})"
    instruction_schema = answer_schema(config)

    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=config.model,
            engine_kwargs={
                # auto: the model's own dtype on GPUs (bfloat16 for today's instruction models)
                "dtype": runtime.resolve_dtype(config.dtype, on_gpu=gpus, gpu_default="auto"),
                "max_model_len": config.max_model_len, "enforce_eager": config.enforce_eager,
                # No JSON whitespace: a model cannot pad an answer with blanks until --max-tokens.
                "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            },
            batch_size=config.batch_size, concurrency=config.concurrency,
            # CPU-only clusters (tests): one CPU per engine instead of the default GPU
            placement_group_config=None if gpus else {"bundles": [{"CPU": 1}]},
            should_continue_on_error=True,  # a failed request is a row with the reason, not a failed job
            log_engine_metrics=False,  # vLLM's Ray metrics wrapper fails to start with Ray 2.60 here
        ),
        preprocess=lambda row: {
            "messages": [{"role": "user", "content": V2S_REWRITE_INSTRUCTION.format(
                max_specific=config.max_specific, prompt=row[_PASSTHROUGH_PREFIX + PROMPT])}],
            "sampling_params": {"temperature": 0.0, "max_tokens": config.max_tokens,
                                "structured_outputs": {"json": instruction_schema}},
        },
        postprocess=lambda row: {**{_PASSTHROUGH_PREFIX + n: row.get(_PASSTHROUGH_PREFIX + n) for n in schema.names},
                                 "generated_text": row["generated_text"],
                                 "num_generated_tokens": row["num_generated_tokens"], _INFERENCE_ERROR: ""},
    )

    def conform_batch(batch: pa.Table) -> pa.Table:
        return conform(batch, schema)

    def absolute_uris(batch: pa.Table) -> pa.Table:
        # the output lives elsewhere: relative media paths would no longer resolve from it
        batch = conform_manifest(batch, schema)  # labels parsed as the score job does (missing texts: null)
        uris = [None if u is None else storage.resolve(u, manifest.base_dir) for u in batch.column(URI).to_pylist()]
        return batch.set_column(batch.schema.get_field_index(URI), URI, pa.array(uris, pa.string()))

    ds = manifest.read().map_batches(absolute_uris, batch_format="pyarrow")
    todo = ds.filter(lambda row: needs_parts(row, config))
    out = ds.filter(lambda row: not needs_parts(row, config))
    if todo.count():  # no engine is started for a manifest without long prompts
        hidden = todo.rename_columns({name: _PASSTHROUGH_PREFIX + name for name in schema.names})
        finish = _ReadAnswers(schema, rewriter, config.max_tokens)
        out = processor(hidden).map_batches(finish, batch_format="pyarrow").union(out)
    # last: row-wise steps retype a column that is null throughout a block
    out = out.map_batches(conform_batch, batch_format="pyarrow")
    out.write_parquet(config.output, filesystem=storage.arrow_filesystem(config.output, config.storage)[0])

    written = open_manifest(config.output, config.storage)  # the output is a manifest the score job reads
    if (written.num_rows, written.ids_digest) != (manifest.num_rows, manifest.ids_digest):
        # a bug, never a data problem: as the score job's own check, it is not reported as bad input
        raise RowAccountingError(f"the rewrite wrote {written.num_rows} rows for {manifest.num_rows}, or other ids")
    return _summary(config, manifest.num_rows, rewriter)


def _summary(config: RewriteConfig, rows: int, rewriter: str) -> dict:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path = storage.arrow_filesystem(config.output, config.storage)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=[REWRITER, REWRITE_ERROR])
    asked = pc.sum(pc.is_valid(table.column(REWRITER))).as_py() or 0
    failed = table.filter(pc.is_valid(table.column(REWRITE_ERROR)))
    return {"rows": rows, "rewritten": asked - failed.num_rows, "failed": failed.num_rows,
            "error_examples": sorted(set(failed.column(REWRITE_ERROR).to_pylist()))[:3],
            "rewriter": rewriter, "output": storage.redact(config.output)}
