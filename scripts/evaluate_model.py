"""Evaluate trained emotion models on the preprocessed arrays or on an image folder.

    models/<model>.keras (+ <model>.json) and preprocessed_data/X_<split>.npy, y_<split>.npy
      -> models/eval/<model-stem>-<split>/metrics.json         metrics, settings, model sha256
         models/eval/<model-stem>-<split>/confusion_matrix.png  counts and row-normalised
         models/eval/<model-stem>-<split>/mistakes.png          the most confident mistakes
         models/eval/<model-stem>-<split>/probabilities.npy     the outputs, one row per image (+ _tta)
         logs/eval/<model-stem>-<split>/                        TensorBoard: the same images + scalars

A .tflite model is run through LiteRT, as prediction runs it (its results go to
<model-stem>-litert-<split>/). Several --model values are evaluated one after the other and
compared in one table.
--tta also averages predictions over ten crops of each image (corners, centre, mirrored) and reports
the metrics with and without it. --images DIR evaluates an image folder DIR/<class>/*
directly, decoded exactly as preprocessing decodes it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cli import HelpFormatter, as_flags, number, run_cli
from fervgg import config
from fervgg.common import FervggError
from fervgg.evaluate import SPLIT_CHOICES, EvalSettings, evaluate


EXAMPLES = """examples:
  evaluate_model.py                                  default model on the test arrays
  evaluate_model.py --split both --tta               val and test, with and without TTA
  evaluate_model.py --split train --tta              the model's probabilities.npy on the training
                                                     images: a teacher for model_training.py --teacher
  evaluate_model.py --model models/best_model.keras models/fine_tuned_model.keras
                                                     compare two models in one table
  evaluate_model.py --images data/test               straight from an image folder
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Evaluate one or more trained models: accuracy, per-class precision/recall/F1,\n"
        "balanced accuracy and confusion matrix (printed, in metrics.json, as PNGs and in\n"
        "TensorBoard), optionally with test-time augmentation. Input is the preprocessed\n"
        "arrays (--data-dir) or an image folder (--images).",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", type=Path, nargs="+", default=None, metavar="PATH",
                   help="model file(s) to evaluate, .keras (Keras) or .tflite (LiteRT, as prediction runs "
                   "it); several give a comparison table (default: "
                   f"{config.FINE_TUNED_MODEL} in --models-dir if present, else {config.BEST_MODEL})")
    m.add_argument("--models-dir", type=Path, default=config.MODELS_DIR,
                   help="where the default model is looked up; results go under <models-dir>/"
                   f"{config.EVAL_DIR_NAME}/ unless --out-dir is given")
    d = p.add_argument_group("data (one of --data-dir or --images)")
    src = d.add_mutually_exclusive_group()
    src.add_argument("--data-dir", type=Path, default=config.PREPROCESSED_DIR,
                     help="the preprocessed arrays folder (X_*.npy, y_*.npy, meta.json) written by "
                     "data_processing.py, as in model_training.py")
    src.add_argument("--images", type=Path, default=None, metavar="DIR",
                     help="evaluate an image-folder dataset DIR/<class>/<images> instead of the arrays "
                     "(e.g. data/test): folders are matched to the model's class names (case-"
                     "insensitive), unknown folders are skipped with a warning, unreadable files are "
                     "skipped and counted; decoding is the same as preprocessing")
    d.add_argument("--split", choices=SPLIT_CHOICES, default=None,
                   help="which preprocessed split(s) to evaluate (default: test; not with --images; "
                   "train: e.g. a teacher's probabilities)")
    o = p.add_argument_group("output")
    o.add_argument("--out-dir", type=Path, default=None,
                   help="results go to <out-dir>/<model-stem>-<split>/ (default: <models-dir>/"
                   f"{config.EVAL_DIR_NAME})")
    o.add_argument("--logs-dir", type=Path, default=config.LOGS_DIR,
                   help=f"TensorBoard images and scalars go to <logs-dir>/{config.EVAL_DIR_NAME}/"
                   "<model-stem>-<split>/ (previous evaluation events there are replaced)")
    o.add_argument("--mistakes", type=int, default=config.MISTAKES_SHOWN, metavar="N",
                   help="how many of the most confident mistakes to show in mistakes.png (0: no file)")
    r = p.add_argument_group("inference")
    r.add_argument("--batch-size", type=int, default=config.EVAL_BATCH_SIZE, help="images per forward pass")
    r.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also average the predictions over ten crops (4 corners "
                   "and centre, each mirrored; at the model's own crop size if it was trained on random "
                   "crops) and report both results side by side")
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes for --images")
    r.add_argument("--max-megapixels", type=number(float, above=0, high=10_000),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="--images: refuse images larger than this when decoded (decompression bombs)")
    args = p.parse_args(argv)
    try:
        settings(args)
    except FervggError as exc:
        p.error(as_flags(str(exc)))
    return args


def settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(**vars(args))


def main(argv=None) -> int:
    evaluate(settings(parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_cli(main)
