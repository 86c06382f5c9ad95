"""Which model to run and how: a .keras model through Keras or its .tflite export through
LiteRT, with the class names from the model's sidecar. Shared by photo and video prediction.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg import emotion_model  # TF-free at import time: TensorFlow is only imported to load a .keras
from fervgg.common import FervggError, check_gray_input, model_not_found, sha256_file

BACKENDS = ("auto", "litert", "keras")


def choose_model(args) -> tuple[str, Path, Path]:
    """(backend, file to load, .keras path whose sidecar describes it)."""
    model = args.model or emotion_model.default_model_path(args.models_dir)
    if model.is_dir():
        raise emotion_model.folder_not_model(model)
    shipped = Path(config.PRETRAINED_MODEL)
    if args.model is None and not _model_or_export(model) and _model_or_export(shipped):
        print(f"note: no model of your own in {args.models_dir}: using the shipped FER2013 model {shipped}",
              file=sys.stderr)
        model = shipped
    if model.suffix == config.TFLITE_SUFFIX:
        if args.backend == "keras":
            raise FervggError(f"--backend keras needs a .keras model, not {model}")
        return "litert", model, model.with_suffix(".keras")
    lite = model.with_suffix(config.TFLITE_SUFFIX)
    export_hint = f"python scripts/export_model.py --model {model}"
    if args.backend == "keras":
        if not model.is_file():
            raise model_not_found(model)
        return "keras", model, model
    if args.backend == "litert":
        if not lite.is_file():
            raise FervggError(f"no LiteRT model {lite}: create it with {export_hint}")
        if not export_is_current(model, lite):
            print(f"warning: {lite} is older than {model}: re-export it with {export_hint}", file=sys.stderr)
        return "litert", lite, model
    if lite.is_file() and export_is_current(model, lite):
        return "litert", lite, model
    if not model.is_file():
        raise model_not_found(model)
    if lite.is_file():
        print(f"note: {lite} is older than {model}, using Keras (slower start); "
              f"refresh it with {export_hint}", file=sys.stderr)
    return "keras", model, model


def export_is_current(model: Path, lite: Path) -> bool:
    """Whether the .tflite was exported from this .keras: by file times, or, where those say
    otherwise (a git checkout writes files in any order), by the checksum export_model.py
    recorded in the sidecar."""
    if not model.is_file() or lite.stat().st_mtime >= model.stat().st_mtime:
        return True
    try:
        record = json.loads(emotion_model.sidecar_path(model).read_text(encoding="utf-8"))["litert_export"]
        return record["file"] == lite.name and record["keras_sha256"] == sha256_file(model)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _model_or_export(model: Path) -> bool:
    return model.is_file() or model.with_suffix(config.TFLITE_SUFFIX).is_file()


class KerasClassifier:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.model = emotion_model.load_model(self.path)
        self.image_size = check_gray_input(self.model.input_shape, self.path)
        self.num_outputs = int(self.model.output_shape[-1])

    def predict(self, pixels: np.ndarray, batch_size: int = config.EVAL_BATCH_SIZE) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        out = [np.asarray(self.model.predict_on_batch(pixels[i:i + batch_size]), dtype=np.float32)
               for i in range(0, len(pixels), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_outputs), np.float32)


def load_classifier(backend: str, path: Path, threads: int | None = None):
    if backend == "litert":
        from fervgg.litert_runtime import LiteRTClassifier

        return LiteRTClassifier(path, threads=threads)
    return KerasClassifier(path)


def class_names_for(info_path: Path, classifier) -> list[str]:
    info = emotion_model.model_info(info_path, classifier.num_outputs)
    if info.assumed:
        print(f"warning: {info.assumed} ({', '.join(info.class_names)})", file=sys.stderr)
    names = info.class_names
    if len(names) != classifier.num_outputs:
        raise FervggError(f"{emotion_model.sidecar_path(info_path)} lists {len(names)} classes but the model "
                        f"has {classifier.num_outputs} outputs")
    side = info.image_size
    if side != classifier.image_size:
        raise FervggError(f"{emotion_model.sidecar_path(info_path)} says image size {side} but the model "
                        f"takes {classifier.image_size}x{classifier.image_size}")
    return names
