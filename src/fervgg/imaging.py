"""Decoding untrusted image files: any common format and mode, EXIF orientation,
size limits against decompression bombs. Used by preprocessing, evaluation on an
image folder, and prediction, so every path decodes pixels the same way.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from fervgg import config
from fervgg.common import FervggError, first_line

EXIF_ORIENTATION = 0x0112
# JPEG draft decoding shrinks each side up to 8 times, so a header up to 64 times the
# decoded limit can still be legitimate; PIL's own check (a backstop behind ours) allows that.
DRAFT_PIXEL_FACTOR = 64
LIMIT_SETTING = "`max_megapixels`"
_max_pixels = config.MAX_IMAGE_PIXELS


def set_max_pixels(pixels: int) -> None:
    """The decoded-size limit of every image opened from now on (the `max_megapixels`
    setting), and PIL's process-wide guards to match: its own pixel limit, its bomb warning
    made an error, truncated files refused. Entry points call it once, before decoding
    (a process pool's workers inherit it); importing this module changes nothing."""
    global _max_pixels
    _max_pixels = int(pixels)
    Image.MAX_IMAGE_PIXELS = _max_pixels * DRAFT_PIXEL_FACTOR
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def max_pixels() -> int:
    return _max_pixels


def too_large(width: int, height: int, limit: int) -> str:
    return (f"{width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of {limit / 1e6:g}; "
            f"{LIMIT_SETTING} raises it")


class BadImage(FervggError):
    """The file cannot be used as an image; the message says why, in a few words."""


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in {"Thumbs.db", "desktop.ini"}


def list_files(folder: Path, hidden: list[Path] | None = None) -> list[Path]:
    """Every non-hidden regular file below `folder`, recursively, in sorted order.

    Hidden files and folders (.DS_Store, ._foo.jpg, .git) are left out; pass a list as
    `hidden` to get them back, so they can be counted rather than skipped without a word.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if hidden is not None:
            hidden += [Path(dirpath) / d for d in sorted(dirnames) if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_hidden(path):
                found.append(path)
            elif hidden is not None:
                hidden.append(path)
    return found


def open_image(path: Path | bytes, max_pixels: int | None = None, draft_size: int | None = None) -> Image.Image:
    """Open, check limits, fully decode and apply EXIF orientation. `path` may also be the
    bytes of an image file (an upload), checked and decoded the same way.

    `draft_size` lets JPEG decode at 1/2..1/8 scale when the result only needs to be
    about that big on each side, which makes large photos much cheaper; the limit applies
    to the decoded size, and `image.info["original_size"]` keeps the file's own (before
    orientation). Raises BadImage for anything that is not a usable image.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        data = memoryview(path)
        size = data.nbytes
    else:
        data = None
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                raise BadImage(f"a broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
            raise BadImage("cannot read file (No such file or directory)") from None
        except OSError as exc:
            raise BadImage(f"cannot read file ({exc.strerror or exc})") from None
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block the read, or never end
            raise BadImage("not a regular file (a pipe, socket or device)")
        size = info.st_size
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if size > config.MAX_FILE_BYTES:
        raise BadImage(f"file too large ({size / 2**20:.0f} MiB > {config.MAX_FILE_BYTES // 2**20} MiB)")
    if data is not None:
        return _decode(io.BytesIO(data), _max_pixels if max_pixels is None else max_pixels, draft_size)
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror or exc})") from None
    # Decode from a file object, not a path: Pillow then reads instead of memory-mapping,
    # and its memory-mapped path scrambles uncompressed TIFFs whose orientation tag swaps
    # width and height (Pillow 13).
    with file:
        return _decode(file, _max_pixels if max_pixels is None else max_pixels, draft_size)


def _decode(file, max_pixels: int, draft_size: int | None) -> Image.Image:
    try:
        image = Image.open(file)
        original = image.size
        if draft_size and image.format == "JPEG" and min(original) > 2 * draft_size:
            image.draft(image.mode, (draft_size, draft_size))
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(f"image too large ({too_large(*original, max_pixels)})")
        image.load()
        image.info["original_size"] = original
        # exif_transpose copies even when there is nothing to do; only call it when needed.
        # (TIFF keeps orientation in its own tags, other formats in an "exif" block.)
        has_exif = "exif" in image.info or image.format in ("TIFF", "MPO")
        if has_exif and image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"image too large (decompression bomb; {LIMIT_SETTING} raises the limit)") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt or truncated image ({first_line(exc)})") from None
    except MemoryError:
        raise BadImage("image needs too much memory to decode") from None
    return image


def decoded_scale(image: Image.Image) -> float:
    """How many file pixels one decoded pixel spans (1.0 unless JPEG draft mode shrank it)."""
    original = image.info.get("original_size")
    return max(original) / max(image.size) if original else 1.0


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: transparency composited on white, 16-bit scaled down."""
    if image.mode in WIDE_MODES:
        image = _wide_to_gray(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def to_gray(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit grayscale ("L")."""
    if image.mode == "L":
        return image
    if image.mode in WIDE_MODES:
        return _wide_to_gray(image)
    return to_rgb(image).convert("L")


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
WIDE_MODES = SIXTEEN_BIT_MODES + ("I", "F")


def _wide_to_gray(image: Image.Image) -> Image.Image:
    # 16-bit modes have a known full scale; "I" and "F" do not, so theirs is guessed.
    full_scale = 65535 if image.mode in SIXTEEN_BIT_MODES else None
    return Image.fromarray(_to_uint8(np.asarray(image), full_scale), mode="L")


def _to_uint8(values: np.ndarray, full_scale: int | None = None) -> np.ndarray:
    """16/32-bit integer or float pixels to uint8, keeping relative brightness."""
    is_float = np.issubdtype(values.dtype, np.floating)  # before the conversion below makes every array float
    values = values.astype(np.float64)
    if values.size == 0:
        return values.astype(np.uint8)
    high = values.max()
    if full_scale:
        scale = 255.0 / full_scale
    elif is_float and high <= 1.0:
        scale = 255.0
    elif high <= 255:
        scale = 1.0
    elif high <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / high
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def gray_array(image: Image.Image, size: int) -> np.ndarray:
    """A decoded image to a (size, size) uint8 array (stretched if not square)."""
    gray = to_gray(image)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8)


def load_gray(path: Path, size: int) -> np.ndarray:
    """Path to a (size, size) uint8 array; raises BadImage."""
    return gray_array(open_image(path, draft_size=size), size)
