"""Export a trained .keras model to LiteRT (.tflite) for fast prediction.

    models/best_model.keras -> models/best_model.tflite   (beside it, same name)

The .tflite takes the same input as the .keras model (raw grayscale pixels 0-255,
shape (N, S, S, 1), any N) and gives the same probabilities. Before it replaces an
existing file, its outputs are compared with Keras's on random inputs (same top class,
largest absolute difference <= --tolerance). The export is recorded in the model's
JSON sidecar (models/best_model.json), which prediction also reads the class names from.

To publish a model (as models/pretrained/ is made): --out-dir and --name write a copy of
the .keras, its sidecar and the .tflite there; --float16 stores the weights of both at
half size (computation stays float32 in our scripts; both are checked against the
float32 original).

    python scripts/export_model.py                       # the default model
    python scripts/export_model.py --model models/fine_tuned_model.keras
    python scripts/export_model.py --model runs/best_model.keras --float16 \
        --out-dir models/pretrained --name fer2013_vgg16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cli import HelpFormatter, number, run_cli
from fervgg import config
from fervgg import emotion_model
from fervgg.common import (atomic_save_keras, atomic_write_json, check_gray_input, FervggError, first_line,
                           model_not_found, sha256_file, utc_now, writable_folder)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="the .keras model to export (default: "
                   "fine_tuned_model.keras in --models-dir if present, else best_model.keras)")
    p.add_argument("--models-dir", type=Path, default=config.MODELS_DIR, help="where the default model is looked for")
    p.add_argument("--check-samples", type=number(int, 1, 10_000), default=config.EXPORT_CHECK_SAMPLES,
                   help="random inputs on which LiteRT and Keras must agree")
    p.add_argument("--tolerance", type=number(float, 0, 1), default=config.EXPORT_TOLERANCE,
                   help="largest allowed absolute difference of probabilities")
    p.add_argument("--seed", type=number(int, 0), default=config.SEED)
    pub = p.add_argument_group("publishing a copy")
    pub.add_argument("--out-dir", type=Path, default=None,
                     help="write NAME.keras, NAME.json and NAME.tflite here instead of the .tflite beside the model")
    pub.add_argument("--name", default=None, help="file name (no suffix) of the copy in --out-dir "
                     "(default: the model's own)")
    pub.add_argument("--float16", action="store_true",
                     help="store the weights as float16: files half the size; the allowed difference is then "
                     f"--tolerance or {config.EXPORT_TOLERANCE_FLOAT16:g}, whichever is larger")
    args = p.parse_args(argv)
    if args.name is not None and (args.out_dir is None or not args.name or "/" in args.name or args.name[0] == "."):
        p.error("--name needs --out-dir and is a plain file name without a folder")
    return args


def tflite_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(config.TFLITE_SUFFIX)


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
    info = json.loads(side.read_text(encoding="utf-8"))
    info["litert_export"] = {"file": tflite_file.name, "keras_sha256": sha256_file(keras_path),
                             "weights": "float16" if float16 else "float32", "max_abs_difference": diff,
                             "created": utc_now()}
    atomic_write_json(side, info)


def main(argv=None) -> int:
    args = parse_args(argv)
    model_path = args.model or emotion_model.default_model_path(args.models_dir)
    if model_path.suffix == config.TFLITE_SUFFIX:
        raise FervggError(f"{model_path} is already a LiteRT model: pass the .keras model it came from")
    if not model_path.is_file():  # before importing Keras (seconds) just to say so
        raise model_not_found(model_path)
    out = tflite_path(model_path)
    if not emotion_model.sidecar_path(model_path).is_file():
        print(f"warning: {emotion_model.sidecar_path(model_path)} is missing: prediction will assume "
              f"FER2013's 7 classes", file=sys.stderr)

    start = time.perf_counter()
    model = emotion_model.load_model(model_path)
    check_gray_input(model.input_shape, model_path)
    tolerance = max(args.tolerance, config.EXPORT_TOLERANCE_FLOAT16) if args.float16 else args.tolerance
    x = check_inputs(model.input_shape[1], args.check_samples, args.seed)
    expected = np.asarray(model.predict_on_batch(x), dtype=np.float32)
    keras_out = model_path
    if args.out_dir is not None:
        keras_out = publish_keras(model, model_path, args, x, expected, tolerance)
        out = tflite_path(keras_out)
    weights = "float16" if args.float16 else "float32"

    # Convert into a staging file first: an export that fails the check must not replace
    # a good .tflite.
    staging = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    try:
        try:
            convert(model, staging, args.float16)
        except FervggError:
            raise
        except Exception as exc:
            raise FervggError(f"LiteRT conversion of {model_path} failed: {first_line(exc)}") from None
        from fervgg.litert_runtime import LiteRTClassifier

        diff = check("litert", expected, LiteRTClassifier(staging).predict(x), tolerance, str(out))
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    record_export(keras_out, out, args.float16, diff)
    size_mib = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mib:.1f} MiB, {weights} weights) in {time.perf_counter() - start:.1f} s")
    print(f"predict with: python scripts/predict_emotion.py --model {keras_out} --image_path PHOTO")
    return 0


def publish_keras(model, model_path: Path, args, x: np.ndarray, expected: np.ndarray, tolerance: float) -> Path:
    """The .keras copy (float16 weights with --float16) and its sidecar in --out-dir, checked
    against the original as our scripts load it; returns its path."""
    writable_folder(args.out_dir, "--out-dir")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = args.out_dir / f"{args.name or model_path.stem}.keras"
    if target.resolve() == model_path.resolve():
        raise FervggError(f"--out-dir and --name would overwrite {model_path} itself")
    copy = emotion_model.with_policy(model, "float16") if args.float16 else model
    atomic_save_keras(copy, target)
    try:
        reloaded = emotion_model.load_model(target)
        check("float16 keras" if args.float16 else "copied keras", expected,
              np.asarray(reloaded.predict_on_batch(x), dtype=np.float32), tolerance, str(target))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    side = emotion_model.sidecar_path(model_path)
    info = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    info.update(model=target.name, weights="float16" if args.float16 else "float32",
                exported_from={"file": str(model_path), "sha256": sha256_file(model_path)})
    atomic_write_json(emotion_model.sidecar_path(target), info)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB) and its sidecar")
    return target


if __name__ == "__main__":
    run_cli(main)
