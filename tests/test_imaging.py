"""scripts/imaging.py: decoding untrusted images to grayscale arrays (modes, bit depths,
formats, JPEG draft mode, EXIF orientation). Tiny synthetic images in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fervgg import config
from fervgg import imaging
from conftest import BLOCKS, assert_dark_side, exif_with, save, top_dark

# As outside pytest: imaging.py makes PIL's bomb warning an error when imported, but pytest
# resets warning filters around each test.
pytestmark = pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")


def gray(path: Path, size: int = 4) -> np.ndarray:
    return imaging.load_gray(path, size)


def test_modes_decode_to_expected_gray(tmp_path):
    p = tmp_path
    Image.new("L", (4, 4), 100).save(p / "l.png")
    assert (gray(p / "l.png") == 100).all()

    rgb = Image.new("RGB", (4, 4), (255, 0, 0))
    rgb.paste((0, 255, 0), (2, 0, 4, 4))
    rgb.save(p / "rgb.png")
    g = gray(p / "rgb.png")
    assert (g[:, :2] == 76).all() and (g[:, 2:] == 150).all()  # ITU-R 601 luma

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black -> white background
    rgba.paste((0, 0, 0, 255), (0, 0, 2, 4))  # opaque black
    rgba.paste((0, 0, 0, 128), (2, 2, 4, 4))  # half transparent black
    rgba.save(p / "rgba.png")
    g = gray(p / "rgba.png")
    assert (g[:, :2] == 0).all() and (g[:2, 2:] == 255).all() and (np.abs(g[2:, 2:].astype(int) - 127) <= 1).all()

    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255, 200, 200, 200] + [0] * (253 * 3))
    pal.paste(1, (0, 0, 2, 4))
    pal.paste(2, (2, 0, 4, 4))
    pal.save(p / "p.png")
    g = gray(p / "p.png")
    assert (g[:, :2] == 255).all() and (g[:, 2:] == 200).all()
    pal.info["transparency"] = 2  # palette transparency composites onto white as well
    pal.save(p / "p_transparent.png", transparency=2)
    assert (gray(p / "p_transparent.png")[:, 2:] == 255).all()

    i16 = np.array([[65535, 32768], [0, 1000]], dtype=np.uint16)
    Image.fromarray(i16).save(p / "i16.png")
    assert Image.open(p / "i16.png").mode.startswith("I")
    assert gray(p / "i16.png", 2).tolist() == [[255, 128], [0, 4]]

    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # white
    cmyk.paste((0, 0, 0, 255), (0, 0, 2, 4))  # black
    cmyk.paste((255, 0, 0, 0), (2, 0, 4, 2))  # cyan
    cmyk.save(p / "cmyk.tif")
    cmyk.save(p / "cmyk.jpg", quality=95)
    for name in ("cmyk.tif", "cmyk.jpg"):
        g = gray(p / name).astype(int)
        assert (g[:, :2] <= 3).all(), name
        assert (np.abs(g[:2, 2:] - 179) <= 3).all(), name
        assert (g[2:, 2:] >= 252).all(), name

    la = Image.new("LA", (4, 4), (100, 255))
    la.paste((100, 0), (2, 0, 4, 4))
    la.save(p / "la.png")
    g = gray(p / "la.png")
    assert (g[:, :2] == 100).all() and (g[:, 2:] == 255).all()

    one = Image.new("1", (4, 4), 0)
    one.paste(1, (2, 0, 4, 4))
    for name in ("one.png", "one.bmp", "one.tif"):
        one.save(p / name)
        g = gray(p / name)
        assert (g[:, :2] == 0).all() and (g[:, 2:] == 255).all(), name


def test_16bit_scaling_is_consistent(tmp_path):
    """A 16-bit image is scaled by its bit depth, not by whether its brightest pixel exceeds 255."""
    for high in (255, 256, 4095):
        values = np.array([[high, 200], [0, 0]], dtype=np.uint16)
        Image.fromarray(values).save(tmp_path / f"dark{high}.png")
        g = gray(tmp_path / f"dark{high}.png", 2)
        assert g[0, 1] == 1, (high, g)  # 200 / 65535 of full scale
        assert g[0, 0] == round(high * 255 / 65535), (high, g)


def test_wide_modes_scale_floats_by_range_and_integers_as_they_are(tmp_path):
    """A float image in [0, 1] is stretched to 0-255; 32-bit integers up to 255 are kept as
    they are (values 0 and 1 are near-black, not black and white)."""
    floats = np.array([[1.0, 0.5], [0.0, 0.25]], dtype=np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    assert gray(tmp_path / "f.tif", 2).tolist() == [[255, 128], [0, 64]]
    ints = np.array([[1, 0], [0, 1]], dtype=np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert gray(tmp_path / "i.tif", 2).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("name, kwargs, tolerance", [
    ("x.jpg", {"quality": 95}, 6),
    ("x.jpeg", {"quality": 95}, 6),
    ("x.png", {}, 0),
    ("x.bmp", {}, 0),
    ("x.gif", {}, 0),
    ("x.webp", {"lossless": True}, 0),
    ("x.tif", {}, 0),
    ("x.tiff", {"compression": "tiff_lzw"}, 0),
])
def test_formats(tmp_path, name, kwargs, tolerance):
    save(tmp_path / name, BLOCKS, **kwargs)
    g = imaging.load_gray(tmp_path / name, 16).astype(int)
    assert np.abs(g - BLOCKS).max() <= tolerance


def test_large_jpeg_uses_draft_and_stays_accurate(tmp_path):
    big = np.kron(np.array([[0, 255], [255, 0]], dtype=np.uint8), np.ones((100, 100), dtype=np.uint8))
    save(tmp_path / "big.jpg", big, quality=95)
    g = imaging.load_gray(tmp_path / "big.jpg", 16).astype(int)
    assert (g[1:7, 1:7] <= 8).all() and (g[1:7, 9:15] >= 247).all() and (g[9:15, 9:15] <= 8).all()


@pytest.mark.parametrize("name, kwargs", [
    ("o.jpg", {"quality": 95}),
    ("o.png", {}),
    ("o.webp", {"lossless": True}),
    ("o.tif", {}),  # uncompressed TIFF: orientation lives in its own tag
    ("o_lzw.tif", {"compression": "tiff_lzw"}),
])
def test_exif_orientation_is_applied(tmp_path, name, kwargs):
    # Orientation 6: rotate 90 degrees clockwise for display -> the top goes to the right.
    # Orientation 8: counter-clockwise -> the top goes to the left.
    for orientation, dark_side in ((1, "top"), (6, "right"), (8, "left")):
        path = tmp_path / f"{orientation}_{name}"
        if name.endswith(".tif"):
            top_dark().save(path, tiffinfo={imaging.EXIF_ORIENTATION: orientation}, **kwargs)
        else:
            top_dark().save(path, exif=exif_with(orientation), **kwargs)
        opened = imaging.open_image(path)
        assert opened.size == ((32, 16) if orientation == 1 else (16, 32)), (name, orientation)
        assert_dark_side(np.asarray(imaging.to_gray(opened)), dark_side)
        assert_dark_side(imaging.load_gray(path, 16), dark_side)  # stretched to a square


def test_pixel_limit_applies_to_the_decoded_size(tmp_path):
    """The limit is on what gets decoded: a JPEG over it at full size is accepted when draft
    mode shrinks it under, refused (naming size, limit and setting) when it cannot."""
    path = tmp_path / "big.jpg"
    save(path, np.kron(BLOCKS, np.ones((128, 128), dtype=np.uint8)), quality=90)  # 2048x2048
    side = Image.open(path).size[0]
    try:
        imaging.set_max_pixels(side * side // 10)
        with pytest.raises(imaging.BadImage, match=rf"{side}x{side} = .* megapixels, over the limit of "
                                                   r".*; `max_megapixels` raises it"):
            imaging.open_image(path)
        image = imaging.open_image(path, draft_size=side // 8)
        assert image.size == (side // 8, side // 8)  # the smallest 1/2^k scale still >= draft size
        assert image.info["original_size"] == (side, side) and imaging.decoded_scale(image) == 8
        assert imaging.open_image(path, draft_size=side // 8 + 1).size == (side // 4, side // 4)
        assert imaging.load_gray(path, 16).shape == (16, 16)  # load_gray drafts to its output size
    finally:
        imaging.set_max_pixels(config.MAX_IMAGE_PIXELS)
    assert imaging.decoded_scale(imaging.open_image(path)) == 1


def test_a_broken_link_and_a_pipe_are_named_as_such(tmp_path):
    """Found in folders given to predict_emotion.py: a dangling link read "No such file", a FIFO
    "empty file (0 bytes)" (and a FIFO with a writer would block the read)."""
    import os

    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(imaging.BadImage, match="a broken symbolic link \\(to .*gone.jpg, which does not exist\\)"):
        imaging.open_image(tmp_path / "broken.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(imaging.BadImage, match="not a regular file"):
        imaging.open_image(tmp_path / "pipe.jpg")
    with pytest.raises(imaging.BadImage, match="No such file or directory"):
        imaging.open_image(tmp_path / "absent.jpg")
