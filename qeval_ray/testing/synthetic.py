"""Generated test media and manifests (demo, tests, benchmarks); nothing here is downloaded.

    python -m qeval_ray.testing.synthetic DIR [--images 36] [--videos 4] [--seed 0]

writes DIR/manifest.parquet and the media beside it: images of several sizes and colour modes,
short clips, prompts, generator names and synthetic MOS labels, plus one corrupt image and one
missing file so the run shows what error rows look like.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GENERATORS = ("gen-alpha", "gen-beta", "gen-gamma", "gen-delta")
SUBJECTS = ("a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "a city street in the rain",
            "an astronaut riding a horse", "a watercolor of mountains", "a robot reading a book",
            "a field of sunflowers", "a glass teapot on a wooden table", "a dragon made of clouds")
STYLES = ("photorealistic", "oil painting", "pixel art", "studio lighting", "cinematic", "")


def pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colourful pattern with some noise: structured enough to look like an image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy, phase = rng.uniform(0.005, 0.05, 3), rng.uniform(0.005, 0.05, 3), rng.uniform(0, 6.3, 3)
    channels = [np.sin(x * fx[c] + y * fy[c] + phase[c]) for c in range(3)]
    img = (np.stack(channels, -1) * 0.5 + 0.5) * 255 + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def save_image(path: Path, pixels: np.ndarray, mode: str = "RGB") -> Path:
    """Save ``pixels`` (H x W x 3 uint8) converted to a PIL colour ``mode`` (RGBA gets a real alpha)."""
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = np.linspace(0, 255, pixels.shape[1], dtype=np.uint8)[None, :].repeat(pixels.shape[0], 0)
        image = Image.fromarray(np.dstack([pixels, alpha]))  # 4 channels -> RGBA
    elif mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(grey)  # uint16 -> mode I;16
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def bomb_png(path: Path, width: int = 60_000, height: int = 60_000) -> Path:
    """A tiny PNG whose header claims a huge image: a decompression bomb by its declared size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated(path: Path, source: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep))])
    return path


def write_video(path: Path, frames: int, fps: float, width: int, height: int, seed: int = 0,
                codec: str = "libx264", pts_jitter: bool = False) -> Path:
    """A clip of a moving pattern, encoded with PyAV. ``pts_jitter`` makes the frame rate variable."""
    import fractions

    import av

    base = pattern(height, width * 2, seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}  # test media: encode fast
        if pts_jitter:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        pts = 0
        for i in range(frames):
            shift = (i * 4) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, shift : shift + width]), format="rgb24")
            if pts_jitter:
                frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
                pts += int(1000 / fps * (0.5 if i % 3 == 0 else 1.25))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def prompt_for(i: int) -> str:
    subject = SUBJECTS[i % len(SUBJECTS)]
    style = STYLES[(i // len(SUBJECTS)) % len(STYLES)]
    return f"{subject}, {style}" if style else subject


def make_corpus(out_dir: str | Path, images: int = 36, videos: int = 4, seed: int = 0,
                with_errors: bool = True, max_side: int = 512) -> Path:
    """Write media and ``manifest.parquet`` (relative uris) into ``out_dir``; return the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    modes = ("RGB", "RGB", "RGB", "RGBA", "L", "P", "CMYK", "I;16")
    rows = []
    for i in range(images):
        h, w = (int(v) for v in rng.integers(64, max_side + 1, 2))
        mode = modes[i % len(modes)]
        ext = "jpg" if mode in ("CMYK",) or i % 5 == 1 and mode in ("RGB", "L") else "png"
        path = save_image(out / "media" / f"img_{i:04d}.{ext}", pattern(h, w, seed * 10_000 + i), mode)
        rows.append(_row(f"img-{i:04d}", path, out, i, rng))
    for i in range(videos):
        fps = (24, 25, 30, 8)[i % 4]
        path = write_video(out / "media" / f"clip_{i:03d}.mp4", frames=int(fps * 1.5), fps=fps,
                           width=160 + 32 * (i % 3), height=96 + 16 * (i % 2), seed=seed * 1000 + i)
        rows.append(_row(f"clip-{i:03d}", path, out, images + i, rng))
    if with_errors:
        source = next((out / r["uri"] for r in rows if r["uri"].endswith(".jpg")), out / rows[0]["uri"])
        corrupt = truncated(out / "media" / "corrupt.jpg", source, 0.3)
        rows.append(_row("corrupt-0000", corrupt, out, 900, rng))
        rows.append(_row("missing-0000", out / "media" / "missing.png", out, 901, rng))
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return out / "manifest.parquet"


def _row(item_id: str, path: Path, root: Path, i: int, rng) -> dict:
    return {
        "id": item_id,
        "uri": str(path.relative_to(root)),
        "prompt": prompt_for(i),
        "model": GENERATORS[i % len(GENERATORS)],
        "quality_mos": round(float(rng.uniform(1, 5)), 3),
        "alignment_mos": round(float(rng.uniform(1, 5)), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qeval_ray.testing.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--images", type=int, default=36)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_corpus(args.out_dir, images=args.images, videos=args.videos, seed=args.seed))


if __name__ == "__main__":
    main()


def write_audio(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An audio-only file (no video stream): a sine tone encoded with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        samples = (np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
