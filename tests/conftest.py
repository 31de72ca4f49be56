"""Shared fixtures: a tiny model built once, generated media, and a local Ray instance.

The suite runs under ``scripts/offline`` (a network namespace with only loopback); the environment
below also tells every library not to look for a hub.
"""

from __future__ import annotations

import os

os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    RAY_AUTH_MODE="disabled",  # Ray 2.60's token auth would break `ray job submit` in tests
    VLLM_ENABLE_V1_MULTIPROCESSING="0",
    VLLM_CPU_KVCACHE_SPACE="1",
    TOKENIZERS_PARALLELISM="false",
)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from qeval_ray import media  # noqa: E402

from qeval_ray.testing import synthetic  # noqa: E402

media.import_decord()  # before qwen-vl-utils imports decord: see media.import_decord

REPO = Path(__file__).resolve().parent.parent

# Small images keep CPU runs quick; the resize rules are the same at any size.
SMALL = ["--max-pixels", str(64 * 28 * 28), "--video-max-pixels", str(16 * 28 * 28)]
MAX_MODEL_LEN = 2048  # vLLM runs: the "too-long" row of the mixed corpus exceeds it


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from qeval_ray.testing.tiny_model import build

    return str(build(tmp_path_factory.mktemp("tiny_model")))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        # More logical CPUs than cores: scoring actors take fractions and read tasks still get one.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray


def write_manifest(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory) -> Path:
    """Good images of several sizes and modes, and every kind of bad row the job must survive."""
    root = tmp_path_factory.mktemp("mixed")
    media = root / "media"
    media.mkdir()
    rows = []
    sizes = [(40, 40), (300, 200), (57, 211), (512, 384), (90, 1000), (28, 28)]
    modes = ["RGB", "RGBA", "L", "P", "CMYK", "I;16", "LA", "1"]
    for i, ((h, w), mode) in enumerate(zip(sizes * 2, modes + ["RGB"] * 4)):
        ext = "jpg" if mode == "CMYK" else ("webp" if i == 9 else "png")
        path = synthetic.save_image(media / f"good_{i}.{ext}", synthetic.pattern(h, w, i), mode)
        rows.append({"id": f"good-{i}", "uri": f"media/{path.name}", "prompt": synthetic.prompt_for(i), "model": f"gen-{i % 3}"})
    for i, (frames, fps, w, h) in enumerate([(36, 24, 160, 96), (50, 25, 224, 128), (45, 30, 320, 180)]):
        path = synthetic.write_video(media / f"clip_{i}.mp4", frames, fps, w, h, seed=100 + i)
        rows.append({"id": f"clip-{i}", "uri": f"media/{path.name}", "prompt": synthetic.prompt_for(20 + i),
                     "model": f"gen-{i % 3}", "media_type": "video" if i == 0 else None})
    synthetic.write_video(media / "one_frame.mkv", 1, 24, 160, 96, seed=7)
    rows.append({"id": "one-frame", "uri": "media/one_frame.mkv", "prompt": "a single frame", "model": "gen-1"})
    whole = (media / "clip_2.mp4").read_bytes()
    (media / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    synthetic.write_audio(media / "audio_only.mp4")
    (media / "empty.mp4").write_bytes(b"")
    (media / "garbage.mov").write_bytes(os.urandom(4000))
    rows += [
        {"id": "clip-truncated", "uri": "media/truncated.mp4", "prompt": "half a clip", "model": "gen-0"},
        {"id": "clip-audio-only", "uri": "media/audio_only.mp4", "prompt": "no picture", "model": "gen-0"},
        {"id": "clip-empty", "uri": "media/empty.mp4", "prompt": "zero bytes", "model": "gen-0"},
        {"id": "clip-garbage", "uri": "media/garbage.mov", "prompt": "not a container", "model": "gen-0"},
    ]
    rows.append({"id": "quotes", "uri": "media/good_0.png", "model": "gen-0",
                 "prompt": 'a "quoted" sign saying \'hi\' — 東京の夜景, Ünïcödé, emoji 🦊'})
    synthetic.truncated(media / "corrupt.jpg", media / "good_4.jpg", 0.4)
    (media / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    synthetic.bomb_png(media / "bomb.png")
    synthetic.save_image(media / "thin.png", synthetic.pattern(2, 500, 7))  # aspect ratio 250 > 200
    (media / "empty.png").write_bytes(b"")
    rows += [
        {"id": "corrupt", "uri": "media/corrupt.jpg", "prompt": "a truncated jpeg", "model": "gen-0"},
        {"id": "garbage", "uri": "media/garbage.png", "prompt": "random bytes", "model": "gen-0"},
        {"id": "missing", "uri": "media/does_not_exist.png", "prompt": "a missing file", "model": "gen-1"},
        {"id": "bomb", "uri": "media/bomb.png", "prompt": "a decompression bomb", "model": "gen-1"},
        {"id": "thin", "uri": "media/thin.png", "prompt": "an extreme aspect ratio", "model": "gen-1"},
        {"id": "zero-bytes", "uri": "media/empty.png", "prompt": "an empty file", "model": "gen-2"},
        {"id": "empty-prompt", "uri": "media/good_1.png", "prompt": "", "model": "gen-2"},
        {"id": "null-prompt", "uri": "media/good_1.png", "prompt": None, "model": "gen-2"},
        {"id": "vision-token", "uri": "media/good_2.png", "prompt": "sneaky <|image_pad|> prompt", "model": "gen-2"},
        {"id": "unknown-ext", "uri": "media/good_2.data", "prompt": "no extension hint", "model": "gen-2"},
        {"id": "bad-type", "uri": "media/good_2.png", "prompt": "audio?", "media_type": "audio", "model": "gen-2"},
        # Longer than the vLLM runs' --max-model-len: the engine itself fails on this one item.
        {"id": "too-long", "uri": "media/good_3.png", "prompt": " ".join(["lighthouse"] * 3000), "model": "gen-0"},
    ]
    # Long prompts with Vague-to-Specific parts (scored in parts by runs with --v2s), image and video.
    long_prompt = ("an old stone harbour at dawn with three fishing boats moored along the quay, nets drying on "
                   "wooden racks, a cat asleep on a coil of rope, mist lifting off the water and gulls overhead")
    parts = {"v2s_vague": "a harbour at dawn", "v2s_specific": ["three fishing boats at a quay", "a sleeping cat"]}
    rows += [
        {"id": "long-v2s", "uri": "media/good_5.png", "prompt": long_prompt, "model": "gen-1", **parts},
        {"id": "clip-v2s", "uri": "media/clip_1.mp4", "prompt": long_prompt, "model": "gen-2", **parts},
    ]
    rng = np.random.default_rng(0)
    for k, row in enumerate(rows):
        row.setdefault("media_type", None)
        row.update({key: row.get(key) for key in parts})  # from_pylist takes its columns from row 0
        row["quality_mos"] = None if k % 7 == 3 else round(float(rng.uniform(1, 5)), 2)  # labels, some missing
        row["alignment_mos"] = round(float(rng.uniform(1, 5)), 2)
    return write_manifest(root / "manifest.parquet", rows)


# Expected status of every bad row above.
MIXED_BAD = {
    "corrupt": "decode_error", "garbage": "decode_error", "missing": "fetch_error", "bomb": "decode_error",
    "thin": "decode_error", "zero-bytes": "decode_error", "empty-prompt": "invalid_row",
    "null-prompt": "invalid_row", "vision-token": "invalid_row", "unknown-ext": "invalid_row",
    "bad-type": "invalid_row", "clip-truncated": "decode_error", "clip-audio-only": "decode_error",
    "clip-empty": "decode_error", "clip-garbage": "decode_error",
}


def read_scores(out_dir) -> pa.Table:
    return pq.read_table(Path(out_dir) / "scores").sort_by("id")


def assert_probabilities(table: pa.Table, aspect: str) -> None:
    from qeval_ray.scorers.qeval import probability_columns

    probs = np.array([table.column(c).to_pylist() for c in probability_columns(aspect)], dtype=float).T
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    scores = np.array(table.column(aspect).to_pylist(), dtype=float)
    assert np.allclose(probs @ np.array([1, 0.75, 0.5, 0.25, 0]), scores, atol=1e-12)
    assert ((scores >= 0) & (scores <= 1)).all()
    # The spread column: the five-level distribution's standard deviation on the 1-5 scale.
    levels = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    spread = np.sqrt((probs * (levels - (1 + 4 * scores)[:, None]) ** 2).sum(axis=1))
    assert np.allclose(np.array(table.column(f"{aspect}_std").to_pylist(), dtype=float), spread, atol=1e-12)
