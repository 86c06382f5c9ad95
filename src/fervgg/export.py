"""Export a trained .keras model to LiteRT (.tflite) for fast prediction.

    models/best_model.keras -> models/best_model.tflite   (beside it, same name)

The .tflite takes the same input as the .keras model (raw grayscale pixels 0-255, shape
(N, S, S, 1), any N) and gives the same probabilities. Before it replaces an existing file,
both are run as classifiers (classifiers.Classifier) on random inputs and must agree (same
top class, largest absolute difference <= `tolerance`). The export is recorded in the
model's JSON sidecar, which prediction also reads the class names from.

To publish a model (as models/pretrained/ is made): `out_dir` and `name` write a copy of the
.keras, its sidecar and the .tflite there; `float16` stores the weights of both at half
size (computation stays float32; both are checked against the float32 original).

`int8_data` (a preprocessed data folder) also writes NAME.int8.tflite, quantised and judged
on that data's accuracy by fervgg.quantize; prediction then prefers it.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg import emotion_model
from fervgg.artifacts import read_meta
from fervgg.classifiers import KerasClassifier, Notes, print_note
from fervgg.common import (FervggError, atomic_save_keras, atomic_write_json, first_line, loads_json, sha256_file,
                           unique_temporary, utc_now, writable_folder)


@dataclass
class ExportSettings:
    model: Path | None = None  # the .keras model; None: the default model in models_dir
    models_dir: Path = config.MODELS_DIR
    check_samples: int = config.EXPORT_CHECK_SAMPLES  # random inputs on which LiteRT and Keras must agree
    tolerance: float = config.EXPORT_TOLERANCE  # largest allowed absolute difference of probabilities
    seed: int = config.SEED
    out_dir: Path | None = None  # publish NAME.keras, NAME.json and NAME.tflite here
    name: str | None = None  # the copy's file name without suffix (default: the model's own)
    float16: bool = False  # store the weights as float16 (tolerance at least EXPORT_TOLERANCE_FLOAT16)
    int8_data: Path | None = None  # a preprocessed data folder: also write the int8 model (fervgg.quantize)
    int8_samples: int = config.INT8_SAMPLES  # training images that calibrate it
    int8_max_loss: float = config.INT8_MAX_LOSS  # accuracy it may lose, one view and ten-crop

    def __post_init__(self):
        if self.name is not None and (self.out_dir is None or not self.name or "/" in self.name
                                      or self.name[0] == "."):
            raise FervggError("`name` needs `out_dir` and is a plain file name without a folder")
        if self.check_samples < 1:
            raise FervggError("`check_samples` must be at least 1")
        if not 0 <= self.tolerance <= 1:
            raise FervggError("`tolerance` must be between 0 and 1")
        if self.int8_samples < 1:
            raise FervggError("`int8_samples` must be at least 1")
        if not 0 <= self.int8_max_loss <= 1:
            raise FervggError("`int8_max_loss` must be between 0 and 1")


@dataclass
class ExportResult:
    keras: Path  # the model the .tflite belongs to (the published copy with `out_dir`)
    tflite: Path
    max_difference: float  # largest |keras - litert| probability on the check inputs
    int8: Path | None = None  # the quantised model, when asked for and accurate enough


def tflite_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(config.TFLITE_SUFFIX)


def export(settings: ExportSettings, notes: Notes | None = None) -> ExportResult:
    """Convert, check against Keras, then write the .tflite (and the published copy); the
    sidecar records the export. A FervggError, with nothing replaced, when the check fails."""
    notes = notes or print_note
    model_path = settings.model or emotion_model.default_model_path(settings.models_dir)
    if model_path.suffix == config.TFLITE_SUFFIX:
        raise FervggError(f"{model_path} is already a LiteRT model: pass the .keras model it came from")
    emotion_model.check_model_file(model_path)  # before importing Keras (seconds) just to say so
    if settings.out_dir is not None:
        writable_folder(settings.out_dir, "`out_dir`")
    if settings.int8_data is not None:
        read_meta(settings.int8_data)  # a missing or damaged data folder is refused before any work
    if not emotion_model.sidecar_path(model_path).is_file():
        notes(f"warning: {emotion_model.sidecar_path(model_path)} is missing: prediction will assume "
              "FER2013's 7 classes")
    else:
        emotion_model.model_info(model_path)  # a damaged sidecar is refused before any work

    start = time.perf_counter()
    original = KerasClassifier(model_path)
    tolerance = max(settings.tolerance, config.EXPORT_TOLERANCE_FLOAT16) if settings.float16 else settings.tolerance
    x = check_inputs(original.image_size, settings.check_samples, settings.seed)
    expected = original.predict(x)
    keras_out = model_path
    if settings.out_dir is not None:
        keras_out = _publish_keras(original.model, model_path, settings, x, expected, tolerance)
    out = tflite_path(keras_out)

    # Convert into a staging file first: an export that fails the check must not replace
    # a good .tflite.
    staging = unique_temporary(out)
    try:
        try:
            convert(original.model, staging, settings.float16)
        except FervggError:
            raise
        except Exception as exc:
            raise FervggError(f"LiteRT conversion of {model_path} failed: {first_line(exc)}") from None
        from fervgg.litert_runtime import LiteRTClassifier

        diff = check("litert", expected, LiteRTClassifier(staging).predict(x), tolerance, str(out))
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    record_export(keras_out, out, settings.float16, diff)
    weights = "float16" if settings.float16 else "float32"
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {weights} weights) in "
          f"{time.perf_counter() - start:.1f} s")
    int8 = None
    if settings.int8_data is not None:
        from fervgg.quantize import quantize

        int8 = quantize(original.model, keras_out, out, settings.int8_data, settings.int8_samples,
                        settings.int8_max_loss, settings.seed, notes).path
    return ExportResult(keras_out, out, diff, int8)


def convert(model, path: Path, float16: bool) -> None:
    """Keras model -> .tflite file, float32 or with float16 weights (flushed to disk, so a
    rename can publish it)."""
    if float16:
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        with contextlib.redirect_stdout(io.StringIO()):  # its "Saved artifact at ..." listing
            path.write_bytes(converter.convert())
    else:
        model.export(str(path), format="litert", verbose=False)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def check_inputs(size: int, samples: int, seed: int) -> np.ndarray:
    """Random pixel inputs: half smooth (face-like low frequencies), half noise, so that the
    outputs are not all alike."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (samples, size, size, 1)).astype(np.float32)
    half = samples // 2
    if half:
        coarse = rng.uniform(0, 255, (half, 6, 6, 1)).astype(np.float32)
        x[:half] = np.kron(coarse, np.ones((1, size // 6 + 1, size // 6 + 1, 1), np.float32))[:, :size, :size]
    return x


def check(what: str, expected: np.ndarray, got: np.ndarray, tolerance: float, not_written: str) -> float:
    """Largest absolute difference of probabilities (returned); a FervggError unless it is
    within `tolerance` and the top classes agree."""
    if got.shape != expected.shape:
        raise FervggError(f"exported model gives shape {got.shape}, Keras {expected.shape}")
    diff, same_top = float(np.abs(got - expected).max()), bool((got.argmax(1) == expected.argmax(1)).all())
    print(f"check on {len(expected)} random inputs: max |keras - {what}| = {diff:.2e}, "
          f"top class {'identical' if same_top else 'DIFFERENT'}")
    if diff > tolerance or not same_top:
        raise FervggError(f"the {what} model does not match Keras (max difference {diff:.2e} > {tolerance:g} or "
                          f"top classes differ): {not_written} not written")
    return diff


def record_export(keras_path: Path, tflite_file: Path, float16: bool, diff: float) -> None:
    """Note the export in the sidecar: prediction then knows the .tflite matches this .keras
    even when file times say otherwise (a git checkout sets them in any order)."""
    side = emotion_model.sidecar_path(keras_path)
    if not side.is_file():
        return
    info = loads_json(side.read_text(encoding="utf-8"))
    record = {"file": tflite_file.name, "keras_sha256": sha256_file(keras_path),
              "weights": "float16" if float16 else "float32"}
    earlier = info.get("litert_export")
    if isinstance(earlier, dict) and {k: earlier.get(k) for k in record} == record:
        return  # already recorded: `make install` rebuilding the shipped .tflite leaves the committed sidecar as is
    info["litert_export"] = {**record, "max_abs_difference": diff, "created": utc_now()}
    atomic_write_json(side, info)


def _publish_keras(model, model_path: Path, settings: ExportSettings, x: np.ndarray, expected: np.ndarray,
                   tolerance: float) -> Path:
    """The .keras copy (float16 weights with `float16`) and its sidecar in `out_dir`, checked
    against the original as our classifiers load it; returns its path."""
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    target = settings.out_dir / f"{settings.name or model_path.stem}.keras"
    if target.resolve() == model_path.resolve():
        raise FervggError(f"`out_dir` and `name` would overwrite {model_path} itself")
    copy = emotion_model.with_policy(model, "float16") if settings.float16 else model
    atomic_save_keras(copy, target)
    try:
        check("float16 keras" if settings.float16 else "copied keras", expected,
              KerasClassifier(target).predict(x), tolerance, str(target))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    side = emotion_model.sidecar_path(model_path)
    info = loads_json(side.read_text(encoding="utf-8")) if side.is_file() else {}
    info.update(model=target.name, weights="float16" if settings.float16 else "float32",
                exported_from={"file": str(model_path), "sha256": sha256_file(model_path)})
    atomic_write_json(emotion_model.sidecar_path(target), info)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB) and its sidecar")
    return target
