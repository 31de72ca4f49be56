"""Decode media bytes into the pixels the model sees, with qwen-vl-utils' rules.

Images: PIL opens the bytes, colour modes become RGB as qwen-vl-utils' ``to_rgb`` makes them
(RGBA composited on white, every other mode through ``convert("RGB")``), and the size follows
``smart_resize`` (factor 28) through qwen-vl-utils' own ``fetch_image``, so pixels equal the
reference's. One deliberate difference: high-bit-depth greyscale (16-bit PNG, ``I;16``/``I``) is
scaled to 8 bits; ``convert("RGB")`` would clip it to near white, as the reference does.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import warnings
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".ppm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi", ".m4v", ".mpg", ".mpeg"})

# qwen-vl-utils' image bounds: 4 to 16384 merged 28x28 patches.
IMAGE_FACTOR = 28
DEFAULT_MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR
DEFAULT_MAX_PIXELS = 16384 * IMAGE_FACTOR * IMAGE_FACTOR
# Pillow's own decompression-bomb threshold: images above it are refused before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


class MediaError(Exception):
    """The bytes cannot become model input; the message says why, in words a user can act on."""


@dataclass(frozen=True)
class ImageOptions:
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # refuse larger source images (bombs)


def pixel_digest(pixels: np.ndarray) -> str:
    """The content digest of decoded media: sha256 of its shape and its pixels, hex.

    Equal for the same file under two uris, different for the same file decoded at another size;
    the engine's media cache key (vLLM's ``multi_modal_uuids``) and the output's ``media_digest``.
    """
    digest = hashlib.sha256(repr(tuple(pixels.shape)).encode())
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()


def infer_media_type(uri: str) -> str | None:
    """``image`` or ``video`` from the file extension, else None."""
    ext = posixpath.splitext(urlparse(uri).path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _to_8bit(image: Image.Image) -> Image.Image:
    """High-bit-depth greyscale to 8-bit L, scaled (not clipped)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8))
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8))
    return image


def open_image(data: bytes, max_image_pixels: int) -> Image.Image:
    """Open and fully decode image bytes, refusing decompression bombs from the header alone."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse at once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_image_pixels
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(f"refused as a decompression bomb: {e} (raise --max-image-pixels to allow)") from e
    except Image.UnidentifiedImageError as e:
        raise MediaError("not a recognised image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"corrupt image: {e}") from e
    return image


def decode_image(data: bytes, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """Image bytes -> H x W x 3 uint8 pixels, resized exactly as the reference resizes them."""
    from qwen_vl_utils import fetch_image

    image = _to_8bit(open_image(data, options.max_image_pixels))
    try:
        # fetch_image applies qwen-vl-utils' to_rgb and smart_resize (ValueError on ratio > 200).
        resized = fetch_image({"image": image, "min_pixels": options.min_pixels, "max_pixels": options.max_pixels})
    except ValueError as e:
        raise MediaError(f"cannot be resized for the model: {e}") from e
    return np.array(resized, dtype=np.uint8)  # a writable copy: torch warns on read-only arrays


# --- videos ---------------------------------------------------------------------------------------
#
# Frame count, indices and size follow qwen-vl-utils' ``fetch_video`` exactly (its ``smart_nframes``
# and ``smart_resize``, indices ``linspace(0, total - 1, n).round()`` in torch as it computes them,
# torchvision bicubic+antialias resize), but only the sampled frames are converted to RGB and each is
# resized as soon as it is decoded: memory stays near the size of the sampled frames at the target
# size, where the reference decodes the whole clip first.
#
# Decoders: PyAV first, decord (the reference's decoder) for what PyAV cannot open. Both are FFmpeg
# underneath; PyAV converts to RGB through the same filter graph as decord (``_DecordRGB``), so both
# give the same frames, byte for byte (tests compare against decord and qwen-vl-utils' own path); PyAV
# is the first choice because, measured here on a 2-minute 1080p clip, it decoded the sampled
# frames in 2-3 s against decord's 9 s, and decord's memory grew by ~130 MB per chunk whenever
# torch work (the resize) ran between its calls, reaching 7 GB where PyAV stayed at 1.6 GB.

DEFAULT_VIDEO_FPS = 8.0  # the reference's setting (qwen-vl-utils' own default is 2)
DEFAULT_VIDEO_MAX_PIXELS = 100_352  # the reference's per-frame cap
VIDEO_DECODERS = ("auto", "pyav", "decord")


@dataclass(frozen=True)
class VideoOptions:
    fps: float = DEFAULT_VIDEO_FPS
    max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS
    decoder: str = "auto"  # auto: PyAV, then decord for what PyAV cannot open


@dataclass(frozen=True)
class VideoClip:
    frames: np.ndarray  # T x H x W x 3 uint8, T even
    indices: list[int]  # source frame index of each frame (before padding)
    source_fps: float
    source_frames: int
    sample_fps: float


def _vision_process():
    from qwen_vl_utils import vision_process

    return vision_process


def frame_indices(total_frames: int, video_fps: float, options: VideoOptions) -> list[int]:
    """Which source frames the reference samples: ``smart_nframes`` then a rounded linspace."""
    import torch

    vp = _vision_process()
    if total_frames < vp.FRAME_FACTOR:
        # qwen-vl-utils' smart_nframes refuses a clip shorter than the frame factor; we sample what
        # there is and pad by repeating the last frame, as its frame-list path does.
        return list(range(total_frames))
    n = vp.smart_nframes({"fps": options.fps}, total_frames=total_frames, video_fps=video_fps)
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def padded_count(n: int) -> int:
    factor = _vision_process().FRAME_FACTOR
    return max(factor, -(-n // factor) * factor)


def frame_size(height: int, width: int, nframes: int, options: VideoOptions) -> tuple[int, int]:
    """The per-frame size ``fetch_video`` picks for ``nframes`` frames of ``height`` x ``width``.

    qwen-vl-utils computes these bounds inline in ``fetch_video`` (no function to call), so they
    are restated here; tests prove parity against ``fetch_video`` itself.
    """
    vp = _vision_process()
    factor = IMAGE_FACTOR
    min_pixels = vp.VIDEO_MIN_TOKEN_NUM * factor * factor
    # A cap below the per-frame minimum would make smart_resize's bounds contradict each other.
    min_pixels = min(min_pixels, options.max_pixels)
    total_pixels = vp.MODEL_SEQ_LEN * factor * factor * 0.9
    max_pixels = max(min(vp.VIDEO_MAX_TOKEN_NUM * factor * factor, total_pixels / nframes * vp.FRAME_FACTOR),
                     int(min_pixels * 1.05))
    max_pixels = min(options.max_pixels, max_pixels)
    try:
        return vp.smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:
        raise MediaError(f"cannot be resized for the model: {e}") from e


def _resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 -> h x w x 3 uint8 with the reference's torchvision bicubic+antialias resize.

    Resizing is per frame, so frames one at a time give the reference's values exactly, and only
    one source-size frame is in memory at once (measured here: faster than chunks of 2 or 8, too).
    """
    import torch
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    tensor = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).unsqueeze(0)
    out = TF.resize(tensor, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def _clean(message: str, limit: int = 200) -> str:
    """Decoder messages can quote the raw input bytes: keep the first printable line, briefly."""
    import re

    line = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    line = re.sub(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? ERROR )?", "", line)  # decord's log prefix
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line[:limit] + ("..." if len(line) > limit else "")


class _SilencedStderr:
    """decord's C++ logger writes to fd 2, raw input bytes included: divert fd 2 while it runs."""

    def __enter__(self):
        import os
        import sys
        import tempfile

        sys.stderr.flush()
        self._sink = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._sink.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import os

        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.close()
        return False


class _Sampler:
    """Collects sampled frames into one preallocated T x h x w x 3 array, resizing each on arrival."""

    def __init__(self, indices: list[int], options: VideoOptions):
        self.indices = indices
        self.options = options
        self.out: np.ndarray | None = None
        self.filled = 0

    def add(self, frame: np.ndarray) -> None:
        if self.out is None:
            n = padded_count(len(self.indices))
            h, w = frame_size(frame.shape[0], frame.shape[1], n, self.options)
            self.out = np.empty((n, h, w, 3), dtype=np.uint8)
        self.out[self.filled] = _resize_frame(frame, self.out.shape[1:3])
        self.filled += 1

    def result(self) -> np.ndarray:
        if self.out is None or self.filled != len(self.indices):
            raise MediaError(f"decoded {self.filled} of {len(self.indices)} sampled frames")
        self.out[self.filled :] = self.out[self.filled - 1]  # pad to the frame factor
        return self.out


def import_decord():
    """Import decord without letting it replace this process's BLAS.

    decord2 3.4.0 ``dlopen``s every library under ``site-packages/nvidia/*/lib`` with RTLD_GLOBAL
    when imported, ``libnvblas`` included. NVBLAS then intercepts torch's CPU matrix products in the
    whole process and, with no GPU config, segfaults (seen here: the HF engine's first video forward
    after a decode). decord never needs NVBLAS, so that one library is skipped. Call this before
    anything else imports decord (qwen-vl-utils does, for the reference path).
    """
    import ctypes
    import sys

    if "decord" in sys.modules:
        return sys.modules["decord"]
    real_cdll = ctypes.CDLL

    class _WithoutNvblas(real_cdll):
        def __init__(self, name, *args, **kwargs):
            if name and "libnvblas" in str(name):
                raise OSError("skipped by qeval_ray: NVBLAS would take over the process's BLAS")
            super().__init__(name, *args, **kwargs)

    ctypes.CDLL = _WithoutNvblas
    try:
        import decord
    finally:
        ctypes.CDLL = real_cdll
    return decord


def _decode_decord(data: bytes, options: VideoOptions) -> VideoClip:
    decord = import_decord()
    with _SilencedStderr():
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        total, fps = len(reader), float(reader.get_avg_fps())
        if total < 1 or not fps > 0:
            raise MediaError(f"no decodable frames (frames={total}, fps={fps})")
        indices = frame_indices(total, fps, options)
        sampler = _Sampler(indices, options)
        for i in indices:
            sampler.add(reader.get_batch([i]).asnumpy()[0])
        frames = sampler.result()
    return VideoClip(frames, indices, fps, total, _sample_fps(len(indices), total, fps))


class _DecordRGB:
    """Decoded frame -> RGB exactly as decord converts it: through an FFmpeg filter graph
    ``buffer -> [transpose] -> scale=W:H -> format=rgb24 -> buffersink``, built as decord builds it
    (``src/video/ffmpeg/filter_graph.cc`` and ``threaded_decoder.cc`` of dmlc/decord).

    PyAV's ``to_ndarray(format="rgb24")`` calls swscale directly with other flags (bilinear, no
    filter-graph colour negotiation): on clips whose chroma is subsampled and whose size is odd
    (MPEG-4 321x241 yuv420p, H.264 yuv422p with an odd height, MJPEG yuvj420p) its pixels differed
    from decord's by 30 to 61 levels here; through this graph they are equal, byte for byte
    (tests/test_media_videos.py). decord also turns clips that carry a display rotation (phone
    videos) upright with ``transpose`` filters, so the reference sees them upright; so does this.
    """

    # decord's rotation (clockwise degrees, from the display matrix) -> its transpose filters.
    TRANSPOSES = {90: ("1",), 180: ("1", "1"), 270: ("2",)}

    def __init__(self, frame, time_base):
        import fractions

        import av

        # PyAV gives the display matrix's counter-clockwise angle; decord's is its negation.
        transposes = self.TRANSPOSES.get(int(round(-(frame.rotation or 0))) % 360, ())
        width, height = (frame.height, frame.width) if len(transposes) == 1 else (frame.width, frame.height)
        self.graph = av.filter.Graph()
        chain = [self.graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                       time_base=time_base or fractions.Fraction(1, 1000))]
        chain += [self.graph.add("transpose", t) for t in transposes]
        chain += [self.graph.add("scale", f"{width}:{height}"), self.graph.add("format", "rgb24"),
                  self.graph.add("buffersink")]
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        self.graph.configure()

    def __call__(self, frame) -> np.ndarray:
        self.graph.push(frame)
        return self.graph.pull().to_ndarray()


def _decode_pyav(data: bytes, options: VideoOptions) -> VideoClip:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        # Count frames from the packets (no decoding): container headers are often missing or wrong.
        total = sum(1 for packet in container.demux(stream) if packet.size)
    if total < 1 or not fps > 0:
        raise MediaError(f"no decodable frames (frames={total}, fps={fps})")
    indices = frame_indices(total, fps, options)
    copies: dict[int, int] = {}
    for i in indices:
        copies[i] = copies.get(i, 0) + 1
    sampler = _Sampler(indices, options)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        to_rgb = None
        for i, frame in enumerate(container.decode(stream)):
            if i in copies:
                to_rgb = to_rgb or _DecordRGB(frame, stream.time_base)
                rgb = to_rgb(frame)  # convert only the sampled frames
                for _ in range(copies[i]):
                    sampler.add(rgb)
            if i >= indices[-1]:
                break
    return VideoClip(sampler.result(), indices, fps, total, _sample_fps(len(indices), total, fps))


def _sample_fps(n: int, total: int, fps: float) -> float:
    return n / max(total, 1e-6) * fps


def decode_video(data: bytes, options: VideoOptions = VideoOptions()) -> VideoClip:
    """Video bytes -> the sampled, resized frames the reference would feed the model."""
    if not data:
        raise MediaError("empty file")
    decoders = {"decord": [_decode_decord], "pyav": [_decode_pyav], "auto": [_decode_pyav, _decode_decord]}
    failures = []
    for decode in decoders[options.decoder]:
        try:
            return decode(data, options)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise many types; try the next one
            name = decode.__name__.removeprefix("_decode_")
            failures.append(f"{name}: {_clean(e)}")
    raise MediaError("cannot decode video (" + "; ".join(failures) + ")")
