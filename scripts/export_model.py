"""Export a trained .keras model to LiteRT (.tflite, float32) for fast prediction.

    models/best_model.keras -> models/best_model.tflite   (beside it, same name)

The .tflite takes the same input as the .keras model (raw grayscale pixels 0-255,
shape (N, S, S, 1), any N) and gives the same probabilities. Before it replaces an
existing file, its outputs are compared with Keras's on random inputs (same top class,
largest absolute difference <= --tolerance). Nothing else is written: prediction reads
the class names from the .keras model's JSON sidecar (models/best_model.json).

    python scripts/export_model.py                       # the default model
    python scripts/export_model.py --model models/fine_tuned_model.keras
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import config
import emotion_model
from common import HelpFormatter, UserError, check_gray_input, first_line, model_not_found, number, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="the .keras model to export (default: "
                   "fine_tuned_model.keras in --models-dir if present, else best_model.keras)")
    p.add_argument("--models-dir", type=Path, default=config.MODELS_DIR, help="where the default model is looked for")
    p.add_argument("--check-samples", type=int, default=config.EXPORT_CHECK_SAMPLES,
                   help="random inputs on which LiteRT and Keras must agree")
    p.add_argument("--tolerance", type=number(float, 0, 1), default=config.EXPORT_TOLERANCE,
                   help="largest allowed absolute difference of probabilities")
    p.add_argument("--seed", type=number(int, 0), default=config.SEED)
    args = p.parse_args(argv)
    if args.check_samples < 1:
        p.error("--check-samples must be at least 1")
    return args


def tflite_path(model_path: Path) -> Path:
    return Path(model_path).with_suffix(config.TFLITE_SUFFIX)


def convert(model, path: Path) -> None:
    """Keras model -> float32 .tflite file (flushed to disk, so a rename can publish it)."""
    model.export(str(path), format="litert", verbose=False)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def compare(model, tflite_file: Path, samples: int, seed: int) -> tuple[float, bool]:
    """Largest |Keras - LiteRT| over random pixel inputs, and whether the top classes agree."""
    from litert_runtime import LiteRTClassifier

    lite = LiteRTClassifier(tflite_file)
    size = lite.image_size
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (samples, size, size, 1)).astype(np.float32)
    # Half the samples smooth (face-like low frequencies), half noise, so that the
    # outputs are not all alike.
    half = samples // 2
    if half:
        coarse = rng.uniform(0, 255, (half, 6, 6, 1)).astype(np.float32)
        x[:half] = np.kron(coarse, np.ones((1, size // 6 + 1, size // 6 + 1, 1), np.float32))[:, :size, :size]
    expected = np.asarray(model.predict_on_batch(x), dtype=np.float32)
    got = lite.predict(x)
    if got.shape != expected.shape:
        raise UserError(f"exported model gives shape {got.shape}, Keras {expected.shape}")
    return float(np.abs(got - expected).max()), bool((got.argmax(1) == expected.argmax(1)).all())


def main(argv=None) -> int:
    args = parse_args(argv)
    model_path = args.model or emotion_model.default_model_path(args.models_dir)
    if model_path.suffix == config.TFLITE_SUFFIX:
        raise UserError(f"{model_path} is already a LiteRT model: pass the .keras model it came from")
    if not model_path.is_file():  # before importing Keras (seconds) just to say so
        raise model_not_found(model_path)
    out = tflite_path(model_path)
    if not emotion_model.sidecar_path(model_path).is_file():
        print(f"warning: {emotion_model.sidecar_path(model_path)} is missing: prediction will assume "
              f"FER2013's 7 classes", file=sys.stderr)

    start = time.perf_counter()
    model = emotion_model.load_model(model_path)
    check_gray_input(model.input_shape, model_path)

    # Convert into a staging file first: an export that fails the check must not replace
    # a good .tflite.
    staging = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    try:
        try:
            convert(model, staging)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"LiteRT conversion of {model_path} failed: {first_line(exc)}") from None
        diff, same_top = compare(model, staging, args.check_samples, args.seed)
        print(f"check on {args.check_samples} random inputs: max |keras - litert| = {diff:.2e}, "
              f"top class {'identical' if same_top else 'DIFFERENT'}")
        if diff > args.tolerance or not same_top:
            raise UserError(f"the exported model does not match Keras (max difference {diff:.2e} > "
                            f"{args.tolerance:g} or top classes differ): {out} was not written")
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    size_mib = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mib:.1f} MiB, float32) in {time.perf_counter() - start:.1f} s")
    print(f"predict with: python scripts/predict_emotion.py --model {model_path} --image_path PHOTO")
    return 0


if __name__ == "__main__":
    run_cli(main)
