"""Video sampling and decoding equal qwen-vl-utils' (the reference's) frames; bad clips fail cleanly."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from qwen_vl_utils import fetch_video
from qwen_vl_utils.vision_process import smart_nframes

from qeval_ray import media

from qeval_ray.testing import synthetic

# (name, frames, fps, width, height, extra write_video arguments)
CLIPS = [
    ("fps24.mp4", 36, 24, 160, 96, {}),
    ("fps25.mp4", 50, 25, 320, 180, {}),
    ("fps30.mp4", 75, 30, 640, 360, {}),
    ("fps60.mp4", 180, 60, 256, 144, {}),
    ("fps8.mp4", 44, 8, 200, 120, {}),
    ("vfr.mp4", 60, 24, 320, 180, {"pts_jitter": True}),
    ("vp9.webm", 30, 30, 224, 128, {"codec": "libvpx-vp9"}),
    ("anim.gif", 10, 10, 160, 96, {"codec": "gif"}),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {name: synthetic.write_video(root / name, n, fps, w, h, seed=i, **kw)
            for i, (name, n, fps, w, h, kw) in enumerate(CLIPS)}


def reference(path, max_pixels):
    """qwen-vl-utils' own path (decord, whole clip), as the reference calls it."""
    ele = {"video": str(path), "fps": 8, "max_pixels": max_pixels, "min_pixels": min(128 * 28 * 28, max_pixels)}
    video, meta = fetch_video(ele, return_video_metadata=True)
    return video.permute(0, 2, 3, 1).numpy(), meta


@pytest.mark.parametrize("name", [c[0] for c in CLIPS])
@pytest.mark.parametrize("max_pixels", [100_352, 16 * 28 * 28])
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_frames_equal_the_reference(clips, name, max_pixels, decoder):
    ref, meta = reference(clips[name], max_pixels)
    clip = media.decode_video(clips[name].read_bytes(), media.VideoOptions(max_pixels=max_pixels, decoder=decoder))
    assert clip.indices == list(meta["frames_indices"])
    assert clip.source_frames == meta["total_num_frames"]
    assert clip.source_fps == pytest.approx(meta["fps"])
    assert clip.frames.shape == ref.shape and clip.frames.dtype == np.uint8
    assert np.array_equal(clip.frames, ref)  # the same FFmpeg conversion (media._DecordRGB), then the same resize
    assert clip.sample_fps == pytest.approx(len(clip.indices) / clip.source_frames * clip.source_fps)


def test_sampling_rules_match_smart_nframes():
    opts = media.VideoOptions()
    for total in (2, 3, 4, 5, 7, 16, 31, 100, 240, 1000, 5000, 20000):
        for fps in (1, 8, 23.976, 24, 25, 30, 60, 120):
            idx = media.frame_indices(total, fps, opts)
            n = smart_nframes({"fps": 8}, total_frames=total, video_fps=fps)
            assert len(idx) == n and n % 2 == 0 and n <= 768
            assert idx[0] == 0 and idx[-1] == total - 1 and idx == sorted(idx)


@pytest.mark.parametrize("fps", [2.0, 8.0, 16.0])
def test_fps_option(clips, fps):
    clip = media.decode_video(clips["fps60.mp4"].read_bytes(), media.VideoOptions(fps=fps, max_pixels=3136))
    assert len(clip.indices) == smart_nframes({"fps": fps}, total_frames=180, video_fps=60)


def test_single_frame_clip_is_padded(tmp_path):
    path = synthetic.write_video(tmp_path / "one.mp4", 1, 24, 160, 96)
    clip = media.decode_video(path.read_bytes())
    assert clip.indices == [0] and clip.frames.shape[0] == 2  # padded to the temporal patch
    assert np.array_equal(clip.frames[0], clip.frames[1])
    with pytest.raises(ValueError):  # where the reference itself gives up
        smart_nframes({"fps": 8}, total_frames=1, video_fps=24)


def test_bad_clips(tmp_path, clips):
    audio = synthetic.write_audio(tmp_path / "audio.m4a").read_bytes()
    whole = clips["vfr.mp4"].read_bytes()
    cases = {
        "empty file": b"",
        "no video stream": audio,
        "cannot decode": b"QEVAL-GARBAGE" * 500,
        "cannot decode ": whole[: len(whole) // 2],  # an mp4 cut in half has lost its index
    }
    for expected, data in cases.items():
        with pytest.raises(media.MediaError, match=expected.strip()):
            media.decode_video(data)


def test_truncated_streamable_clip_scores_what_is_there(tmp_path):
    full = synthetic.write_video(tmp_path / "full.mkv", 48, 24, 320, 180)
    data = full.read_bytes()
    clip = media.decode_video(data[: len(data) // 2])
    assert 0 < clip.source_frames < 48 and clip.frames.shape[0] >= 2


def test_decord_does_not_flood_stderr():
    code = textwrap.dedent("""
        from qeval_ray import media
        try:
            media.decode_video(b"QEVAL-GARBAGE" * 500, media.VideoOptions(decoder="decord"))
        except media.MediaError as e:
            print("ERR", e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR cannot decode video (decord:" in proc.stdout
    assert "QEVAL-GARBAGE" not in proc.stderr and "QEVAL-GARBAGE" not in proc.stdout
    assert len(proc.stderr) < 2000


MEMORY_PROBE = """
import json, resource, sys
from qeval_ray import media
media.import_decord()
import torch  # noqa: F401  (the decode stage's imports, loaded before the baseline)
data = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
clip = media.decode_video(data)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"delta": peak - base, "frames": clip.frames.nbytes, "n": len(clip.indices),
                  "source": clip.source_frames, "shape": list(clip.frames.shape[1:])}))
"""


@pytest.mark.slow
def test_long_1080p_clip_decodes_in_bounded_memory(tmp_path):
    import json

    path = synthetic.write_video(tmp_path / "long.mp4", 120 * 12, 12, 1920, 1080)  # 2 minutes
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    full_decode = r["source"] * 1920 * 1080 * 3  # what the reference holds: every frame, full size
    assert r["n"] == 768 and r["shape"] == [224, 420, 3]
    # Near the sampled frames at the target size (207 MB here); the reference needs ~9 GB.
    assert r["delta"] < r["frames"] + 512 * 2**20, r
    assert r["delta"] < full_decode / 10, r


# Clips of the kinds where PyAV's own RGB conversion differs from decord's: odd sizes with subsampled
# chroma, MPEG-4 and H.264 (and MJPEG), 4:2:0 / 4:2:2 / 4:4:4, full and limited range, BT.601 and
# BT.709 tags. (codec, container, width, height, pix_fmt, color_range, colorspace); range 1 = limited,
# 2 = full; colorspace 1 = BT.709, 5 = BT.601 (bt470bg), 6 = BT.601 (smpte170m), None = untagged.
COLOUR_CLIPS = [
    ("mpeg4", "mp4", 321, 241, "yuv420p", None, None),
    ("mpeg4", "matroska", 99, 67, "yuv420p", 2, 1),
    ("mpeg4", "matroska", 101, 75, "yuv420p", 1, 5),
    ("libx264", "mp4", 99, 67, "yuv444p", 2, 1),
    ("libx264", "mp4", 99, 67, "yuv444p", 1, 6),
    ("libx264", "mp4", 100, 67, "yuv422p", 1, 5),
    ("libx264", "mp4", 100, 67, "yuv422p", 2, 1),
    ("libx264", "mp4", 100, 68, "yuv420p", 2, 1),
    ("libx264", "mp4", 98, 66, "yuv420p10le", 1, 1),
    ("mjpeg", "avi", 99, 67, "yuvj420p", None, None),
]


def colour_clip(codec, container, width, height, pix_fmt, color_range, colorspace, frames=8, seed=0, rotation=0):
    import io

    import av

    buf = io.BytesIO()
    base = synthetic.pattern(height, width + 4 * frames, seed)
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if color_range is not None:
            stream.codec_context.color_range = color_range
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if rotation:
            stream.set_display_rotation(rotation)  # a display matrix, as phones write
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, 4 * i : 4 * i + width]), format="rgb24")
            for packet in stream.encode(rgb.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def decord_frames(data):
    """Every frame at source size, as decord (qwen-vl-utils' decoder) gives it."""
    import io

    reader = media.import_decord().VideoReader(io.BytesIO(data), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def pyav_frames(data, convert):
    import io

    import av

    out = []
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        to_rgb = None
        for frame in container.decode(stream):
            if convert == "job":
                to_rgb = to_rgb or media._DecordRGB(frame, stream.time_base)
                out.append(to_rgb(frame))
            else:
                out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out), frame


@pytest.mark.parametrize("kind", COLOUR_CLIPS, ids=lambda k: "-".join(str(v) for v in k))
def test_pyav_frames_equal_decord_exactly(kind):
    data = colour_clip(*kind)
    ref = decord_frames(data)
    ours, last = pyav_frames(data, "job")
    codec, _, width, height, pix_fmt, color_range, colorspace = kind
    # The clip is what it claims to be (the tags reached the decoder).
    assert last.format.name.replace("yuvj", "yuv") == pix_fmt.replace("yuvj", "yuv")  # H.264 full range: yuvj
    assert (last.width, last.height) == (width, height)
    if color_range is not None:
        assert (int(last.color_range), int(last.colorspace)) == (color_range, colorspace)
    assert ref.shape == ours.shape == (8, height, width, 3)
    assert np.array_equal(ours, ref)  # at source size, every frame, byte for byte
    # And through the job's whole path (sampling, resize): the default decoder equals decord.
    auto = media.decode_video(data, media.VideoOptions(max_pixels=64 * 28 * 28))
    via_decord = media.decode_video(data, media.VideoOptions(max_pixels=64 * 28 * 28, decoder="decord"))
    assert auto.indices == via_decord.indices and np.array_equal(auto.frames, via_decord.frames)


def test_plain_pyav_conversion_differs_where_the_graph_is_needed():
    """Why the filter graph: PyAV's own ``to_ndarray(format="rgb24")`` is off on an odd-size MPEG-4."""
    data = colour_clip(*COLOUR_CLIPS[0])
    plain, _ = pyav_frames(data, "plain")
    assert np.abs(plain.astype(int) - decord_frames(data)).max() > 8


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clips_are_turned_upright_as_decord_does(rotation):
    """A clip with a display rotation (phone videos): decord, so the reference, turns it upright."""
    data = colour_clip("mpeg4", "mp4", 161, 97, "yuv420p", None, None, rotation=rotation)
    ref = decord_frames(data)
    ours, _ = pyav_frames(data, "job")
    assert ref.shape[1:3] == ((97, 161) if rotation == 180 else (161, 97))
    assert ours.shape == ref.shape and np.array_equal(ours, ref)
    auto = media.decode_video(data, media.VideoOptions(max_pixels=64 * 28 * 28))
    via_decord = media.decode_video(data, media.VideoOptions(max_pixels=64 * 28 * 28, decoder="decord"))
    assert np.array_equal(auto.frames, via_decord.frames)
