"""Evaluate trained emotion models on the preprocessed arrays or on an image folder.

    models/<model>.keras (+ <model>.json) and preprocessed_data/X_<split>.npy, y_<split>.npy
      -> models/eval/<model-stem>-<split>/metrics.json         metrics, settings, model sha256
         models/eval/<model-stem>-<split>/confusion_matrix.png  counts and row-normalised
         models/eval/<model-stem>-<split>/mistakes.png          the most confident mistakes
         logs/eval/<model-stem>-<split>/                        TensorBoard: the same images + scalars

Several --model values are evaluated one after the other and compared in one table.
--tta also averages predictions over ten crops of each image (corners, centre, mirrored) and reports
the metrics with and without it. --images DIR evaluates an image folder DIR/<class>/*
directly, decoded exactly as preprocessing decodes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import HelpFormatter, number, run_cli
from fervgg import config
from fervgg import imaging
from fervgg import tta
from fervgg.artifacts import Split
from fervgg.common import (atomic_write_bytes, atomic_write_json, FervggError, format_table, import_tensorflow,
                           library_versions, model_not_found, sha256_file, utc_now)
from fervgg.emotion_model import default_model_path, load_model, model_info, sidecar_path
from fervgg.eval_report import plot_confusion, plot_mistakes, print_report, write_tensorboard
from fervgg.evaluation import (check_count, check_model, compute_metrics, input_size, load_arrays, make_predictor,
                        model_classes, most_confident_mistakes, output_count, predict)
from fervgg.folders import ImageFolder

SPLIT_CHOICES = ("val", "test", "both")
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
MISTAKES_PNG = "mistakes.png"


EXAMPLES = """examples:
  evaluate_model.py                                  default model on the test arrays
  evaluate_model.py --split both --tta               val and test, with and without TTA
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
                   help="model file(s) to evaluate; several give a comparison table (default: "
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
                   help="which preprocessed split(s) to evaluate (default: test; not with --images)")
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
                   "and centre, each mirrored) and report both results side by side")
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes for --images")
    r.add_argument("--max-megapixels", type=number(float, above=0, high=10_000),
                   default=config.MAX_IMAGE_PIXELS / 1e6,
                   help="--images: refuse images larger than this when decoded (decompression bombs)")
    args = p.parse_args(argv)
    if args.images is not None and args.split is not None:
        p.error("--split selects preprocessed arrays; --images evaluates the whole folder")
    args.split = args.split or "test"
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.mistakes < 0:
        p.error("--mistakes must be 0 or more")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.out_dir is None:
        args.out_dir = args.models_dir / config.EVAL_DIR_NAME
    if args.model is None:
        args.model = [default_model_path(args.models_dir)]
    return args


def unique_tags(paths: list[Path]) -> list[str]:
    """Model stems, made unique (best_model, best_model-2, ...) for output folder names."""
    tags, seen = [], {}
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        tags.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return tags


@dataclass
class Outcome:
    """One model on one split: predictions and their metrics."""
    probs: np.ndarray
    metrics: dict
    tta_metrics: dict | None
    seconds: float
    mistakes: np.ndarray  # indices of the most confident mistakes, most confident first


def evaluate_one(predictor, model_path: Path, model_sha: str, model_side: dict, tag: str, data: Split,
                 args, warnings_: list[str]) -> dict:
    """Predict, compute metrics, write metrics.json, the PNGs and TensorBoard; returns a summary row."""
    out_dir = args.out_dir / f"{tag}-{data.name}"
    log_dir = args.logs_dir / config.EVAL_DIR_NAME / f"{tag}-{data.name}"
    print(f"\n== {model_path.name} on {data.name}: {len(data.y)} images, {len(data.class_names)} classes ==",
          flush=True)
    outcome = score(predictor, data, args)
    print_report(outcome.metrics, outcome.tta_metrics, tta.description(data.x.shape[1]) if args.tta else None)
    shown = write_pictures(outcome, model_path, data, args, out_dir, log_dir)
    document = metrics_document(outcome, model_path, model_sha, model_side, data, args, out_dir, log_dir,
                                warnings_)
    atomic_write_json(out_dir / METRICS_FILE, document)  # last: its presence means the folder is complete
    print(f"\nwrote {out_dir / METRICS_FILE}, " + ", ".join(p.name for p in shown) + f"; TensorBoard: {log_dir}")
    m, t = outcome.metrics, outcome.tta_metrics
    return {"model": str(model_path), "tag": tag, "split": data.name, "images": int(len(data.y)),
            "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            **({"tta_accuracy": t["accuracy"], "tta_macro_f1": t["macro_f1"]} if t else {}),
            "metrics_file": str(out_dir / METRICS_FILE)}


def score(predictor, data: Split, args) -> Outcome:
    probs, tta_probs, seconds = predict(predictor, data.x, args.batch_size, args.tta,
                                        f"predicting {data.name}" + (" (TTA)" if args.tta else ""))
    print(f"predicted {len(data.y)} images in {seconds:.1f} s ({1000 * seconds / max(len(data.y), 1):.2f} ms/img"
          + (f", {tta.VIEWS} views each" if args.tta else "") + ")")
    metrics = compute_metrics(data.y, probs, data.class_names)
    tta_metrics = compute_metrics(data.y, tta_probs, data.class_names) if tta_probs is not None else None
    return Outcome(probs, metrics, tta_metrics, seconds, most_confident_mistakes(data.y, probs, args.mistakes))


def write_pictures(outcome: Outcome, model_path: Path, data: Split, args, out_dir: Path,
                   log_dir: Path) -> list[Path]:
    """confusion_matrix.png, mistakes.png and TensorBoard; returns the PNGs written."""
    metrics = outcome.metrics
    title = f"{model_path.name} on {data.name} ({len(data.y)} images): accuracy {metrics['accuracy']:.3f}"
    images = {"confusion_matrix": plot_confusion(np.array(metrics["confusion_matrix"]), data.class_names, title)}
    if args.mistakes:
        images["mistakes"] = plot_mistakes(data.x, data.y, outcome.probs, outcome.mistakes, data.class_names,
                                           f"most confident mistakes: {model_path.name} on {data.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Until the new metrics.json is written, the folder is visibly incomplete (no stale one).
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    files = {"confusion_matrix": out_dir / CONFUSION_PNG, "mistakes": out_dir / MISTAKES_PNG}
    for name, png in images.items():
        atomic_write_bytes(files[name], lambda f, png=png: f.write(png))
    if not args.mistakes:
        files["mistakes"].unlink(missing_ok=True)
    scalars = {f"eval/{k}": metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")}
    if outcome.tta_metrics:
        scalars.update({f"eval_tta/{k}": outcome.tta_metrics[k]
                        for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    write_tensorboard(log_dir, images, scalars)
    return [files[name] for name in images]


def metrics_document(outcome: Outcome, model_path: Path, model_sha: str, model_side: dict, data: Split, args,
                     out_dir: Path, log_dir: Path, warnings_: list[str]) -> dict:
    """The content of metrics.json: model, data, settings, metrics, mistakes, timing."""
    probs, pred = outcome.probs, outcome.probs.argmax(axis=1)
    paths = data.info.get("paths")
    side = sidecar_path(model_path)
    return {
        "created": utc_now(),
        "model": {
            "path": str(model_path.resolve()), "sha256": model_sha,
            "sidecar": str(side) if side.is_file() else None,
            "class_names": model_side.get("class_names"),
            "trained": {k: model_side.get(k) for k in ("created", "run_name", "phase", "best_val_accuracy",
                                                        "best_epoch") if k in model_side},
        },
        "data": {**{k: v for k, v in data.info.items() if k != "paths"}, "n_images": int(len(data.y)),
                 "image_size": int(data.x.shape[1]), "class_names": data.class_names},
        "settings": {
            "split": data.name, "batch_size": args.batch_size, "tta": args.tta,
            "tta_views": tta.description(data.x.shape[1]) if args.tta else None,
            "out_dir": str(out_dir.resolve()), "tensorboard_dir": str(log_dir.resolve()),
            "mistakes_shown": int(len(outcome.mistakes)) if args.mistakes else 0,
            "args": {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
        },
        "metrics": outcome.metrics,
        "tta": outcome.tta_metrics,
        "most_confident_mistakes": [
            {"index": int(i), **({"path": paths[i]} if paths else {}), "true": data.class_names[data.y[i]],
             "predicted": data.class_names[pred[i]], "confidence": float(probs[i, pred[i]])}
            for i in outcome.mistakes
        ],
        "timing": {"predict_seconds": round(outcome.seconds, 3),
                   "ms_per_image": round(1000 * outcome.seconds / max(len(data.y), 1), 3)},
        "warnings": warnings_,
        "versions": library_versions("numpy", "tensorflow", "keras", "sklearn"),
    }


def print_comparison(rows: list[dict], tta: bool, out_dir: Path) -> None:
    names = [Path(r["model"]).name for r in rows]
    duplicate = len({r["model"] for r in rows}) != len(set(names))
    header = ["model", "split", "images", "accuracy", "balanced acc", "macro F1"]
    if tta:
        header += ["TTA acc", "TTA macro F1"]
    table = []
    for r, name in zip(rows, names):
        row = [r["model"] if duplicate else name, r["split"], r["images"], r["accuracy"],
               r["balanced_accuracy"], r["macro_f1"]]
        if tta:
            row += [r["tta_accuracy"], r["tta_macro_f1"]]
        table.append(row)
    print("\n== comparison ==")
    print(format_table(header, table))
    atomic_write_json(out_dir / "comparison.json", {
        "created": utc_now(), "results": rows})
    print(f"wrote {out_dir / 'comparison.json'}")


# ---------------------------------------------------------------- main

@dataclass
class Prepared:
    """A loaded model that fits the data, ready to evaluate."""
    path: Path
    tag: str
    model: object
    n_out: int
    size: int
    class_names: list[str]
    notes: list[str]
    data: list[Split] | None  # None for --images: decoded per model (the mapping depends on its classes)


def load_data(args, model_paths: list[Path]):
    """(image folder or None, meta or None, arrays' splits or None, where: words for messages)."""
    if args.images is None:
        meta, datasets = load_arrays(args.data_dir, args.split)
        return None, meta, datasets, f"the arrays in {args.data_dir}"
    folder = ImageFolder(args.images, args.workers)
    for p in model_paths:  # decoded before TensorFlow starts its threads
        info = model_info(p)
        folder.mapping(info.class_names)  # fail early when no folder matches
        folder.decode(info.image_size)
    return folder, None, None, f"the image folder {folder.root}"


def prepare(path: Path, tag: str, folder, meta, datasets, where: str) -> Prepared:
    """Load a model and check that it fits the data (FervggError if not)."""
    model = load_model(path)
    n_out = output_count(model, path)
    size = input_size(model, path)
    if folder is None:
        check_count(path, n_out, meta["class_names"], where)
    names, note = model_classes(path, n_out, None if folder else meta["class_names"])
    if note:
        print(f"warning: {note}", file=sys.stderr)
    if folder is not None:
        folder.mapping(names)
        if n_out != len(names):
            raise FervggError(f"{path} has {n_out} outputs but its {sidecar_path(path).name} lists "
                            f"{len(names)} classes {names}")
    else:
        for data in datasets:
            check_model(model, path, data, names, where)
    return Prepared(path, tag, model, n_out, size, names, [note] if note else [], datasets)


def main(argv=None) -> int:
    args = parse_args(argv)
    imaging.set_max_pixels(args.max_megapixels * 1e6)
    model_paths = [p.expanduser() for p in args.model]
    for p in model_paths:  # before the slow TensorFlow import
        if not p.is_file():
            raise model_not_found(p)
    folder, meta, datasets, where = load_data(args, model_paths)

    import_tensorflow()  # after the checks above: errors stay fast

    # Load and check every model before evaluating any: a misfit one fails the run up front.
    prepared = [prepare(path, tag, folder, meta, datasets, where)
                for path, tag in zip(model_paths, unique_tags(model_paths))]
    rows = []
    for m in prepared:
        data_list, notes = m.data, m.notes
        if data_list is None:
            data_list = [folder.for_model(m.class_names, m.size)]
            notes = notes + [f"unknown folder skipped: {f}" for f in data_list[0].info["skipped_folders"]]
            check_model(m.model, m.path, data_list[0], m.class_names, where)
        side = model_info(m.path).sidecar if sidecar_path(m.path).is_file() else {}
        sha = sha256_file(m.path)
        print(f"\nmodel {m.path} (sha256 {sha[:12]}...): {m.n_out} outputs, input {m.model.input_shape[1:]}")
        predictor = make_predictor(m.model, m.size, args.tta, args.batch_size)
        rows += [evaluate_one(predictor, m.path, sha, side, m.tag, data, args, notes) for data in data_list]
    if len(rows) > 1:
        print_comparison(rows, args.tta, args.out_dir)
    return 0


if __name__ == "__main__":
    run_cli(main)
