"""Integer quantisation of an exported model: NAME.int8.tflite beside NAME.tflite.

First choice, full-integer post-training quantisation: int8 weights and activations, builtin
ops only, float input and output (so it takes the same raw pixels as every other model file),
calibrated on a seeded sample of the training split. It is kept only if, on the test split
(else val), its accuracy is within `max_loss` of the float .tflite's both on one view and with
ten-crop TTA. Otherwise dynamic-range quantisation (int8 weights, float activations) is tried
and judged the same way. Whatever the outcome, the sidecar's "litert_int8_export" records it
with every accuracy measured; prediction prefers the int8 file while that record says it
belongs to this .keras (classifiers.find_model).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fervgg import config, emotion_model
from fervgg.artifacts import load_split, read_meta
from fervgg.classifiers import Classifier, Notes, describe, int8_path, print_note
from fervgg.common import FervggError, atomic_write_json, first_line, loads_json, sha256_file, unique_temporary, utc_now
from fervgg.evaluation import load_arrays, predict

SCHEMES = ("full-integer", "dynamic-range")


@dataclass
class QuantizeResult:
    path: Path | None  # the .int8.tflite written, None when no scheme kept the accuracy
    scheme: str | None  # the scheme of the file written
    record: dict  # what the sidecar now says (accuracies of the float model and of each scheme tried)


def quantize(model, keras_path: Path, float_tflite: Path, data_dir: Path, samples: int = config.INT8_SAMPLES,
             max_loss: float = config.INT8_MAX_LOSS, seed: int = config.SEED,
             notes: Notes | None = None) -> QuantizeResult:
    """Write keras_path's .int8.tflite (see the module's doc); `model`: the loaded Keras model,
    `float_tflite`: its float export, the reference. Nothing is replaced when no scheme passes."""
    notes = notes or print_note
    calibration = calibration_images(data_dir, samples, seed)
    split = _gate_split(data_dir, notes)
    from fervgg.litert_runtime import LiteRTClassifier

    reference = _scores(describe(LiteRTClassifier(float_tflite), keras_path, notes), split, "float .tflite")
    record = {"file": None, "keras_sha256": sha256_file(keras_path), "scheme": None, "max_loss": max_loss,
              "calibration": {"split": "train", "images": len(calibration), "seed": seed},
              "evaluated_on": {"split": split.name, "images": len(split.y), "dir": str(Path(data_dir).resolve())},
              "accuracy": {"float": reference}, "created": utc_now()}
    out = int8_path(keras_path)
    float32_model = emotion_model.as_float32(model)
    for scheme in SCHEMES:
        staging = unique_temporary(out)
        try:
            convert(float32_model, staging, calibration if scheme == "full-integer" else None)
            got = _scores(describe(LiteRTClassifier(staging), keras_path, notes), split, f"{scheme} int8")
            record["accuracy"][scheme] = got
            loss = max(reference[k] - got[k] for k in reference)
            notes(f"{scheme}: accuracy {_show(got)} vs float {_show(reference)} "
                  f"({'kept' if loss <= max_loss else 'rejected'}: loss {100 * loss:.2f} pt, "
                  f"limit {100 * max_loss:.2f})")
            if loss <= max_loss:
                os.replace(staging, out)
                record.update(file=out.name, scheme=scheme)
                break
        finally:
            staging.unlink(missing_ok=True)
    _record(keras_path, record)
    if record["file"] is None:
        notes(f"no int8 model written: every scheme lost more than {100 * max_loss:.2f} points")
        return QuantizeResult(None, None, record)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {record['scheme']} int8)")
    return QuantizeResult(out, record["scheme"], record)


def calibration_images(data_dir: Path, samples: int, seed: int) -> np.ndarray:
    """A seeded random sample of the training split, float32 (N, S, S, 1)."""
    train = load_split(data_dir, "train")
    if len(train.x) == 0:
        raise FervggError(f"the train split in {data_dir} has no images to calibrate the int8 model on")
    pick = np.sort(np.random.default_rng(seed).choice(len(train.x), min(samples, len(train.x)), replace=False))
    return train.x[pick].astype(np.float32)


def convert(model, path: Path, calibration: np.ndarray | None) -> None:
    """Float32 Keras model -> .tflite: full-integer with `calibration` images, else
    dynamic-range. Input and output stay float32."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibration is not None:
        batches = [calibration[i:i + 32] for i in range(0, len(calibration), 32)]
        converter.representative_dataset = lambda: ([batch] for batch in batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # its "Saved artifact at ..."
            # Float input by design (the model quantises it itself): no input statistics to give.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            path.write_bytes(converter.convert())
    except Exception as exc:
        raise FervggError(f"int8 conversion failed: {first_line(exc)}") from None
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _gate_split(data_dir: Path, notes: Notes):
    """The test split, else (none in the data) val."""
    name = "test" if sum(read_meta(data_dir)["counts"].get("test", {}).values()) else "val"
    return load_arrays(data_dir, name, notes)[1][0]


def _scores(classifier: Classifier, split, what: str) -> dict:
    probs, tta_probs, _ = predict(classifier, split.x, config.EVAL_BATCH_SIZE, True, f"{what} on {split.name}")
    return {"one_view": round(float((probs.argmax(1) == split.y).mean()), 5),
            "ten_crop": round(float((tta_probs.argmax(1) == split.y).mean()), 5)}


def _show(scores: dict) -> str:
    return f"{100 * scores['one_view']:.2f}% one view, {100 * scores['ten_crop']:.2f}% ten-crop"


def _record(keras_path: Path, record: dict) -> None:
    side = emotion_model.sidecar_path(keras_path)
    if side.is_file():
        info = loads_json(side.read_text(encoding="utf-8"))
        info["litert_int8_export"] = record
        atomic_write_json(side, info)
