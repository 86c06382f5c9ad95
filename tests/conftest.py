"""Shared test set-up and helpers. Tests import the package `fervgg`; the command-line
scripts of scripts/ (entry points, not a package) are loaded by path with `script()`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fervgg import imaging

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    """scripts/<name>.py as a module (loaded once), to call its main(argv) in-process. The
    scripts' shared command-line helpers (scripts/cli.py) are loaded first, as `cli`."""
    if name != "cli":
        script("cli")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]

# Keep TensorFlow (if a test imports it) quiet and on the CPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


# ------------------------------------------------------------------------------ images

# Four flat 8x8 blocks (0, 85, 170, 255): survives any lossless format exactly.
BLOCKS = np.kron(np.array([[0, 85], [170, 255]], dtype=np.uint8), np.ones((8, 8), dtype=np.uint8))


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def top_dark(width: int = 32, height: int = 16) -> Image.Image:
    """Top half black, bottom half white, wider than tall."""
    img = Image.new("L", (width, height), 255)
    img.paste(0, (0, 0, width, height // 2))
    return img


def exif_with(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def assert_dark_side(g: np.ndarray, side: str) -> None:
    h, w = g.shape
    halves = {"left": (g[:, : w // 2 - 1], g[:, w // 2 + 1:]),
              "right": (g[:, w // 2 + 1:], g[:, : w // 2 - 1]),
              "top": (g[: h // 2 - 1], g[h // 2 + 1:])}
    dark, light = halves[side]
    assert dark.max() <= 30 and light.min() >= 225, (side, g)



# ------------------------------------------------------------------------------ a tiny model

TINY_SIZE = 48


def face_like(seed: int, size: int = TINY_SIZE) -> np.ndarray:
    """Smooth random blobs: varied model inputs without any data set."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6))
    img = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


@dataclass
class TinyModel:
    path: Path  # best_model.keras, with its .json sidecar and .tflite export beside it
    export_output: str  # what export_model.py printed


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    """An untrained VGG16 layout (48x48, random weights) with a sharpened head, so that
    different inputs get different top classes; saved, with sidecar, and exported."""
    from fervgg import config
    from fervgg import emotion_model
    export_model = script("export_model")
    import keras
    from fervgg.common import atomic_write_json

    models = tmp_path_factory.mktemp("models")
    path = models / config.BEST_MODEL
    model = emotion_model.build_model(len(config.CLASS_NAMES), TINY_SIZE, "none", dense_units=16)
    # An untrained VGG gives nearly the same features for every input; a random head
    # centred on their mean and scaled up makes the top class depend on the input.
    features = keras.Model(model.input, model.get_layer("head_dense").output)
    f = np.asarray(features.predict_on_batch(np.stack([face_like(s) for s in range(100, 116)])[..., None]))
    kernel = np.random.default_rng(0).normal(0, 1, (f.shape[1], len(config.CLASS_NAMES)))
    kernel *= 3.0 / max(float(((f - f.mean(0)) @ kernel).std()), 1e-6)
    model.get_layer("emotion").set_weights([kernel.astype(np.float32), (-f.mean(0) @ kernel).astype(np.float32)])
    model.save(path)
    atomic_write_json(path.with_suffix(".json"), {
        "model": path.name, "class_names": list(config.CLASS_NAMES), "image_size": TINY_SIZE,
        "input": f"raw grayscale pixels 0-255, shape (N, {TINY_SIZE}, {TINY_SIZE}, 1)"})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_model.main(["--model", str(path), "--check-samples", "4"]) == 0
    return TinyModel(path, printed.getvalue())
