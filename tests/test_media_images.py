"""Image decoding equals qwen-vl-utils' (the reference's) pixels, and refuses what it must."""

import numpy as np
import pytest
from PIL import Image
from qwen_vl_utils import fetch_image
from qwen_vl_utils.vision_process import smart_resize

from qeval_ray import media

from qeval_ray.testing import synthetic

SIZES = [(28, 28), (1, 1), (15, 2985), (57, 211), (224, 224), (300, 200), (1023, 767), (1024, 1024),
         (2048, 1536), (4000, 3000), (113, 17), (5, 999)]


@pytest.mark.parametrize("max_pixels", [None, 256 * 28 * 28, 64 * 28 * 28])
def test_smart_resize_parity(tmp_path, max_pixels):
    options = media.ImageOptions() if max_pixels is None else media.ImageOptions(max_pixels=max_pixels)
    for h, w in SIZES:
        expected = smart_resize(h, w, factor=28, min_pixels=options.min_pixels, max_pixels=options.max_pixels)
        data = _png_bytes(synthetic.pattern(h, w, h * w))
        if min(expected) == 0:  # smart_resize floors a very thin image to nothing; so would the reference
            with pytest.raises(media.MediaError, match="cannot be resized"):
                media.decode_image(data, options)
            continue
        assert media.decode_image(data, options).shape == (*expected, 3), (h, w)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK", "LA", "1"])
def test_pixels_equal_the_reference(tmp_path, mode):
    ext = "jpg" if mode == "CMYK" else "png"
    path = synthetic.save_image(tmp_path / f"x.{ext}", synthetic.pattern(123, 321, 5), mode)
    ours = media.decode_image(path.read_bytes(), media.ImageOptions(max_pixels=100 * 28 * 28))
    ref = np.asarray(fetch_image({"image": f"file://{path}", "max_pixels": 100 * 28 * 28}))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((56, 56, 4), np.uint8)  # fully transparent black
    path = tmp_path / "t.png"
    Image.fromarray(rgba).save(path)
    assert (media.decode_image(path.read_bytes()) == 255).all()


def test_16bit_is_scaled_not_clipped(tmp_path):
    grey = (np.linspace(0, 65535, 112 * 112).reshape(112, 112)).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(grey).save(path)
    ours = media.decode_image(path.read_bytes())
    assert np.abs(ours[..., 0].astype(float) - grey / 257.0).max() <= 1.0
    # The reference clips: nearly everything becomes white. We document that difference.
    ref = np.asarray(fetch_image({"image": f"file://{path}"}))
    assert (ref == 255).mean() > 0.9 and (ours == 255).mean() < 0.05


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    data = synthetic.bomb_png(tmp_path / "bomb.png").read_bytes()
    assert len(data) < 200
    with pytest.raises(media.MediaError, match="decompression bomb"):
        media.decode_image(data)
    # A user who needs bigger images raises the limit; the same header is then decoded (and fails
    # only because its data is fake), so the limit is what refused it.
    with pytest.raises(media.MediaError, match="corrupt|truncated"):
        media.decode_image(data, media.ImageOptions(max_image_pixels=10**10))


def test_the_limit_is_configurable(tmp_path):
    data = _png_bytes(synthetic.pattern(100, 100, 0))
    with pytest.raises(media.MediaError, match="decompression bomb"):
        media.decode_image(data, media.ImageOptions(max_image_pixels=5000))
    assert media.decode_image(data, media.ImageOptions(max_image_pixels=10_000)).shape == (112, 112, 3)


def test_bad_images(tmp_path):
    good = synthetic.save_image(tmp_path / "g.jpg", synthetic.pattern(200, 200, 1))
    with pytest.raises(media.MediaError, match="corrupt"):
        media.decode_image(synthetic.truncated(tmp_path / "t.jpg", good, 0.5).read_bytes())
    with pytest.raises(media.MediaError, match="not a recognised image"):
        media.decode_image(b"hello world" * 10)
    with pytest.raises(media.MediaError, match="aspect ratio"):
        media.decode_image(_png_bytes(synthetic.pattern(2, 500, 0)))


def test_media_type_inference():
    assert media.infer_media_type("s3://b/x/y.JPG") == "image"
    assert media.infer_media_type("/a/b.webm") == "video"
    assert media.infer_media_type("file:///a/b.gif") == "video"
    assert media.infer_media_type("a/b.png?versionId=3") == "image"
    assert media.infer_media_type("a/b") is None


def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
