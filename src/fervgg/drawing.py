"""The one drawing style for annotated photos and videos: a box per face in its emotion's
colour and a filled label above it (inside the box at the top edge), sized to the image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour per class, cycled if a model has more classes (Sasha Trubetskoy's distinct colours).
PALETTE = ["#e6194b", "#3cb44b", "#f58231", "#ffe119", "#4363d8", "#911eb4", "#42d4f4",
           "#f032e6", "#bfef45", "#fabed4"]


@dataclass
class Label:
    box: tuple[int, int, int, int]  # x, y, w, h in the image's pixels
    text: str
    class_index: int


def colour_of(class_index: int) -> str:
    return PALETTE[class_index % len(PALETTE)]


def rgb_of(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def text_colour(colour: str) -> str:
    """Black on light colours, white on dark ones (perceived luminance)."""
    r, g, b = rgb_of(colour)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: small bitmap font
        return ImageFont.load_default()


def draw_labels(image: Image.Image, labels: list[Label]) -> Image.Image:
    """Draws on `image` (RGB, in place) and returns it."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    line = max(2, round(max(width, height) / 300))
    font_size = max(12, round(max(width, height) / 40))
    font = _font(font_size)
    pad = max(2, font_size // 5)
    for label in labels:
        x, y, w, h = label.box
        colour = colour_of(label.class_index)
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=colour, width=line)
        left, top, right, bottom = draw.textbbox((0, 0), label.text, font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        lx = min(max(0, x), max(0, width - tw))
        ly = y - th if y - th >= 0 else min(y + line, max(0, height - th))
        draw.rectangle((lx, ly, lx + tw, ly + th), fill=colour)
        draw.text((lx + pad - left, ly + pad - top), label.text, fill=text_colour(colour), font=font)
    return image


def draw_labels_bgr(frame: np.ndarray, labels: list[Label]) -> np.ndarray:
    """The same on an OpenCV (BGR) frame; returns a new frame."""
    if not labels:
        return frame
    image = Image.fromarray(np.ascontiguousarray(frame[..., ::-1]))
    return np.ascontiguousarray(np.asarray(draw_labels(image, labels))[..., ::-1])
