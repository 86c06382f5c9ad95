"""A small synthetic face dataset in FER2013's folder layout, for the demo and tests:
`write_demo_data(DemoDataSettings(...)) -> DemoData`.

    <out_dir>/train/<emotion>/<emotion>_NNN.png   (48x48 grayscale)
    <out_dir>/test/<emotion>/<emotion>_NNN.png

Each emotion has its own brows, eyes and mouth; every image gets random position, scale,
rotation, brightness, contrast and noise, so a model has to learn the features, not pixels.
Seeded: the same settings always give the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from fervgg import config
from fervgg.common import FervggError
from fervgg.settings import check_settings

CANVAS = 96  # drawn at 2x, then downscaled: smoother lines


@dataclass
class DemoDataSettings:
    """Every setting of the demo data (make_demo_data.py has a flag for each)."""
    out_dir: Path = config.DEMO_DATA_DIR
    train_per_class: int = config.DEMO_TRAIN_PER_CLASS
    test_per_class: int = config.DEMO_TEST_PER_CLASS
    image_size: int = config.IMAGE_SIZE
    seed: int = config.SEED
    force: bool = False  # write into a non-empty out_dir

    RANGES: ClassVar[dict[str, dict]] = {"image_size": {"low": 8, "high": 512}, "seed": {"low": 0}}

    def __post_init__(self):
        check_settings(self, self.RANGES)
        if self.train_per_class < 1 or self.test_per_class < 0:
            raise FervggError("`train_per_class` must be >= 1 and `test_per_class` >= 0")


@dataclass
class DemoData:
    out_dir: Path
    written: int  # images drawn; 0 when the data was already there


def write_demo_data(settings: DemoDataSettings) -> DemoData:
    """Draw the images into settings.out_dir; an existing demo set is kept unless `force`."""
    out = settings.out_dir
    if out.exists() and any(out.iterdir()) and not settings.force:
        if all((out / split).is_dir() for split in ("train", "test")):
            return DemoData(out, 0)
        raise FervggError(f"{out} exists and is not empty; pass another `out_dir` or `force`")
    rng = np.random.default_rng(settings.seed)
    total = 0
    for split, per_class in (("train", settings.train_per_class), ("test", settings.test_per_class)):
        for emotion in config.CLASS_NAMES:
            folder = out / split / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw_face(emotion, rng, settings.image_size).save(folder / f"{emotion}_{i:03d}.png")
                total += 1
    return DemoData(out, total)


def draw_face(emotion: str, rng: np.random.Generator, size: int) -> Image.Image:
    """One face: features depend on the emotion, geometry and photometry are jittered."""
    img = Image.new("L", (CANVAS, CANVAS), int(rng.integers(20, 90)))
    d = ImageDraw.Draw(img)
    cx, cy = CANVAS / 2 + rng.normal(0, 3), CANVAS / 2 + rng.normal(0, 3)
    s = rng.uniform(0.85, 1.1)  # face scale
    skin = int(rng.integers(150, 230))
    ink = int(rng.integers(0, 60))
    w = max(2, int(3 * s))

    def pt(x, y):
        return cx + x * s, cy + y * s

    d.ellipse([*pt(-34, -42), *pt(34, 42)], fill=skin)
    eye_open = {"surprise": 9, "fear": 8, "angry": 4, "disgust": 3, "happy": 4, "sad": 5, "neutral": 6}[emotion]
    for side in (-1, 1):
        ex, ey = 14 * side, -10
        d.ellipse([*pt(ex - 7, ey - eye_open), *pt(ex + 7, ey + eye_open)], fill=255 - ink)
        d.ellipse([*pt(ex - 3, ey - 3), *pt(ex + 3, ey + 3)], fill=ink)
        # Brows: inner end down (angry), inner end up (sad/fear), raised (surprise).
        inner, outer = {"angry": (-14, -24), "sad": (-26, -18), "fear": (-28, -22),
                        "surprise": (-30, -30), "disgust": (-18, -22)}.get(emotion, (-22, -22))
        d.line([*pt(ex - 8 * side, inner), *pt(ex + 8 * side, outer)], fill=ink, width=w)
    mouth_y = 20
    if emotion == "happy":
        d.arc([*pt(-16, mouth_y - 12), *pt(16, mouth_y + 10)], 20, 160, fill=ink, width=w)
    elif emotion == "sad":
        d.arc([*pt(-14, mouth_y + 2), *pt(14, mouth_y + 22)], 200, 340, fill=ink, width=w)
    elif emotion == "surprise":
        d.ellipse([*pt(-7, mouth_y - 6), *pt(7, mouth_y + 12)], fill=ink)
    elif emotion == "fear":
        d.ellipse([*pt(-13, mouth_y), *pt(13, mouth_y + 8)], fill=ink)
    elif emotion == "angry":
        d.line([*pt(-13, mouth_y + 6), *pt(13, mouth_y + 6)], fill=ink, width=w + 1)
    elif emotion == "disgust":
        d.line([*pt(-13, mouth_y + 8), *pt(0, mouth_y + 3), *pt(13, mouth_y + 9)], fill=ink, width=w)
        d.line([*pt(-5, 2), *pt(0, 8), *pt(5, 2)], fill=ink, width=w)  # wrinkled nose
    else:  # neutral
        d.line([*pt(-11, mouth_y + 5), *pt(11, mouth_y + 5)], fill=ink, width=w)

    img = img.rotate(rng.normal(0, 8), resample=Image.Resampling.BILINEAR, fillcolor=int(rng.integers(20, 90)))
    arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    arr = arr * rng.uniform(0.7, 1.2) + rng.uniform(-25, 25)  # contrast, brightness
    arr += rng.normal(0, rng.uniform(2, 12), arr.shape)  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
