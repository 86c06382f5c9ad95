"""Evaluate models (.keras through Keras, .tflite through LiteRT: the file named is the one
measured) on the preprocessed arrays or on an image folder.

    <model> (+ its .json sidecar) and <data_dir>/X_<split>.npy, y_<split>.npy
      -> <out_dir>/<tag>-<split>/metrics.json         metrics, settings, model sha256
         <out_dir>/<tag>-<split>/probabilities.npy    (N, C) float32, one row per image in order
                                                       (+ probabilities_tta.npy with TTA): a teacher
                                                       for model_training.py --teacher (split train)
         <out_dir>/<tag>-<split>/confusion_matrix.png  counts and row-normalised
         <out_dir>/<tag>-<split>/mistakes.png          the most confident mistakes
         <logs_dir>/eval/<tag>-<split>/                TensorBoard: the same images + scalars
      (<tag>: the model's file stem, "-litert" added for a .tflite; several models: also
       <out_dir>/comparison.json)

    from fervgg.evaluate import EvalSettings, evaluate
    result = evaluate(EvalSettings(model=[Path("models/best_model.keras")], tta=True))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fervgg import config
from fervgg import imaging
from fervgg.artifacts import Split
from fervgg.classifiers import Classifier, Notes, open_classifier, print_note
from fervgg.common import (FervggError, atomic_save_npy, atomic_write_bytes, atomic_write_json, format_table,
                           library_versions, sha256_file, utc_now)
from fervgg.emotion_model import check_model_file, default_model_path, model_info, sidecar_path
from fervgg.eval_report import plot_confusion, plot_mistakes, print_report, write_tensorboard
from fervgg.evaluation import check_fit, compute_metrics, load_arrays, most_confident_mistakes, predict
from fervgg.folders import ImageFolder
from fervgg.tta import VIEWS, description

SPLIT_CHOICES = ("val", "test", "both", "train")  # train: e.g. a distillation teacher's probabilities
METRICS_FILE = "metrics.json"
PROBS_FILE = "probabilities.npy"
PROBS_TTA_FILE = "probabilities_tta.npy"
CONFUSION_PNG = "confusion_matrix.png"
MISTAKES_PNG = "mistakes.png"
COMPARISON_FILE = "comparison.json"


@dataclass
class EvalSettings:
    """What to evaluate on what, and where the results go."""
    model: list[Path] | None = None  # None: fine_tuned_model.keras in models_dir if present, else best_model.keras
    models_dir: Path = config.MODELS_DIR
    data_dir: Path = config.PREPROCESSED_DIR  # the preprocessed arrays...
    images: Path | None = None  # ...or an image folder DIR/<class>/* instead
    split: str | None = None  # val, test, both or train (default test; arrays only)
    out_dir: Path | None = None  # None: <models_dir>/eval
    logs_dir: Path = config.LOGS_DIR
    mistakes: int = config.MISTAKES_SHOWN  # most confident mistakes drawn (0: no mistakes.png)
    batch_size: int = config.EVAL_BATCH_SIZE
    tta: bool = False  # also report ten-crop TTA
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # decoding processes for `images`
    max_megapixels: float = config.MAX_IMAGE_PIXELS / 1e6

    def __post_init__(self):
        if self.images is not None and self.split is not None:
            raise FervggError("`split` selects preprocessed arrays; `images` evaluates the whole folder")
        self.split = self.split or "test"
        if self.split not in SPLIT_CHOICES:
            raise FervggError(f"`split` must be one of {', '.join(SPLIT_CHOICES)}, not {self.split!r}")
        if self.batch_size < 1:
            raise FervggError("`batch_size` must be at least 1")
        if self.mistakes < 0:
            raise FervggError("`mistakes` must be 0 or more")
        if self.workers < 1:
            raise FervggError("`workers` must be at least 1")
        if self.out_dir is None:
            self.out_dir = Path(self.models_dir) / config.EVAL_DIR_NAME
        if self.model is None:
            self.model = [default_model_path(self.models_dir)]
        self.model = [Path(p).expanduser() for p in self.model]


@dataclass
class EvalResult:
    rows: list[dict]  # one per model and split: accuracy, macro_f1, ..., metrics_file
    comparison_file: Path | None  # with several rows


@dataclass
class Outcome:
    """One model on one split: predictions and their metrics."""
    probs: np.ndarray
    tta_probs: np.ndarray | None
    metrics: dict
    tta_metrics: dict | None
    seconds: float
    mistakes: np.ndarray  # indices of the most confident mistakes, most confident first


@dataclass
class Prepared:
    """A loaded model that fits the data, ready to evaluate."""
    classifier: Classifier
    tag: str
    notes: list[str]
    data: list[Split] | None  # None for an image folder: decoded per model (the mapping depends on its classes)


def unique_tags(paths: list[Path]) -> list[str]:
    """Output folder names: model stems ("-litert" added for a .tflite), made unique
    (best_model, best_model-2, ...)."""
    tags, seen = [], {}
    for p in paths:
        stem = p.stem + ("-litert" if p.suffix == config.TFLITE_SUFFIX else "")
        seen[stem] = seen.get(stem, 0) + 1
        tags.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return tags


def evaluate(settings: EvalSettings, notes: Notes | None = None) -> EvalResult:
    """Evaluate every model of `settings` on its data; writes the files above, prints the
    reports. Every model is loaded and checked against the data before any is evaluated."""
    notes = notes or print_note
    imaging.set_max_pixels(settings.max_megapixels * 1e6)
    for p in settings.model:  # before any slow import
        check_model_file(p)
    folder, datasets, where = _load_data(settings, notes)
    prepared = [_prepare(path, tag, folder, datasets, where, notes)
                for path, tag in zip(settings.model, unique_tags(settings.model))]
    rows = []
    for m in prepared:
        clf, data_list, model_notes = m.classifier, m.data, m.notes
        if data_list is None:
            data_list = [folder.for_model(clf.class_names, clf.image_size)]
            model_notes = model_notes + [f"unknown folder skipped: {f}" for f in data_list[0].info["skipped_folders"]]
            check_fit(clf, data_list[0], where)
        sha = sha256_file(clf.path)
        side = clf.image_size
        print(f"\nmodel {clf.path} (sha256 {sha[:12]}..., {clf.backend}): {clf.num_outputs} outputs, "
              f"input ({side}, {side}, 1)" + (f", reads its centre {clf.crop_size}x{clf.crop_size}"
                                              if clf.crop_size else ""))
        rows += [_evaluate_one(clf, sha, m.tag, data, settings, model_notes, notes) for data in data_list]
    comparison = None
    if len(rows) > 1:
        comparison = _print_comparison(rows, settings.tta, settings.out_dir)
    return EvalResult(rows, comparison)


def _load_data(settings: EvalSettings, notes: Notes):
    """(image folder or None, the arrays' splits or None, where: words for messages)."""
    if settings.images is None:
        _meta, datasets = load_arrays(settings.data_dir, settings.split, notes)
        return None, datasets, f"the dataset in {settings.data_dir}"
    folder = ImageFolder(settings.images, settings.workers)
    for p in settings.model:  # decoded before TensorFlow starts its threads (decoding forks)
        info = model_info(p)
        folder.mapping(info.class_names)  # fail early when no folder matches
        folder.decode(info.image_size)
    return folder, None, f"the image folder {folder.root}"


def _prepare(path: Path, tag: str, folder, datasets, where: str, notes: Notes) -> Prepared:
    """Open a model and check that it fits the data (FervggError if not)."""
    said: list[str] = []

    def note(text: str) -> None:
        said.append(text.removeprefix("warning: ").removeprefix("note: "))
        notes(text)

    backend = "auto" if path.suffix == config.TFLITE_SUFFIX else "keras"
    data_classes = datasets[0].class_names if datasets else None
    clf = open_classifier(path, backend=backend, notes=note, classes=data_classes)
    if folder is not None:
        folder.mapping(clf.class_names)
    else:
        for data in datasets:
            check_fit(clf, data, where)
    return Prepared(clf, tag, said, datasets)


def _evaluate_one(clf: Classifier, sha: str, tag: str, data: Split, settings: EvalSettings,
                  warnings_: list[str], notes: Notes) -> dict:
    """Predict, compute metrics, write metrics.json, the PNGs, the probabilities and TensorBoard;
    returns a summary row."""
    out_dir = settings.out_dir / f"{tag}-{data.name}"
    log_dir = settings.logs_dir / config.EVAL_DIR_NAME / f"{tag}-{data.name}"
    print(f"\n== {clf.path.name} on {data.name}: {len(data.y)} images, {len(data.class_names)} classes ==",
          flush=True)
    outcome = _score(clf, data, settings, notes)
    tta_views = description(clf.image_size, clf.crop_size) if settings.tta else None
    print_report(outcome.metrics, outcome.tta_metrics, tta_views)
    shown = _write_pictures(outcome, clf.path, data, settings, out_dir, log_dir)
    probs_files = _write_probabilities(outcome, out_dir)
    document = _metrics_document(outcome, clf, sha, data, settings, out_dir, log_dir, warnings_, tta_views)
    atomic_write_json(out_dir / METRICS_FILE, document)  # last: its presence means the folder is complete
    print(f"\nwrote {out_dir / METRICS_FILE}, " + ", ".join([p.name for p in shown] + probs_files)
          + f"; TensorBoard: {log_dir}")
    m, t = outcome.metrics, outcome.tta_metrics
    return {"model": str(clf.path), "tag": tag, "split": data.name, "images": int(len(data.y)),
            "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"],
            **({"tta_accuracy": t["accuracy"], "tta_macro_f1": t["macro_f1"]} if t else {}),
            "metrics_file": str(out_dir / METRICS_FILE)}


def _score(clf: Classifier, data: Split, settings: EvalSettings, notes: Notes) -> Outcome:
    probs, tta_probs, seconds = predict(clf, data.x, settings.batch_size, settings.tta,
                                        f"predicting {data.name}" + (" (TTA)" if settings.tta else ""), notes)
    print(f"predicted {len(data.y)} images in {seconds:.1f} s ({1000 * seconds / max(len(data.y), 1):.2f} ms/img"
          + (f", {VIEWS} views each" if settings.tta else "") + ")")
    metrics = compute_metrics(data.y, probs, data.class_names)
    tta_metrics = compute_metrics(data.y, tta_probs, data.class_names) if tta_probs is not None else None
    mistakes = most_confident_mistakes(data.y, probs, settings.mistakes)
    return Outcome(probs, tta_probs, metrics, tta_metrics, seconds, mistakes)


def _write_probabilities(outcome: Outcome, out_dir: Path) -> list[str]:
    """probabilities.npy (and _tta, or no stale one); returns the names written."""
    written = []
    for name, probs in ((PROBS_FILE, outcome.probs), (PROBS_TTA_FILE, outcome.tta_probs)):
        if probs is None:
            (out_dir / name).unlink(missing_ok=True)
        else:
            atomic_save_npy(out_dir / name, probs.astype(np.float32))
            written.append(name)
    return written


def _write_pictures(outcome: Outcome, model_path: Path, data: Split, settings: EvalSettings, out_dir: Path,
                    log_dir: Path) -> list[Path]:
    """confusion_matrix.png, mistakes.png and TensorBoard; returns the PNGs written."""
    metrics = outcome.metrics
    title = f"{model_path.name} on {data.name} ({len(data.y)} images): accuracy {metrics['accuracy']:.3f}"
    images = {"confusion_matrix": plot_confusion(np.array(metrics["confusion_matrix"]), data.class_names, title)}
    if settings.mistakes:
        images["mistakes"] = plot_mistakes(data.x, data.y, outcome.probs, outcome.mistakes, data.class_names,
                                           f"most confident mistakes: {model_path.name} on {data.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Until the new metrics.json is written, the folder is visibly incomplete (no stale one).
    (out_dir / METRICS_FILE).unlink(missing_ok=True)
    files = {"confusion_matrix": out_dir / CONFUSION_PNG, "mistakes": out_dir / MISTAKES_PNG}
    for name, png in images.items():
        atomic_write_bytes(files[name], lambda f, png=png: f.write(png))
    if not settings.mistakes:
        files["mistakes"].unlink(missing_ok=True)
    scalars = {f"eval/{k}": metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")}
    if outcome.tta_metrics:
        scalars.update({f"eval_tta/{k}": outcome.tta_metrics[k]
                        for k in ("accuracy", "balanced_accuracy", "macro_f1")})
    write_tensorboard(log_dir, images, scalars)
    return [files[name] for name in images]


def _metrics_document(outcome: Outcome, clf: Classifier, sha: str, data: Split, settings: EvalSettings,
                      out_dir: Path, log_dir: Path, warnings_: list[str], tta_views: str | None) -> dict:
    """The content of metrics.json: model, data, settings, metrics, mistakes, timing."""
    probs, pred = outcome.probs, outcome.probs.argmax(axis=1)
    paths = data.info.get("paths")
    side = sidecar_path(clf.path)
    trained = model_info(clf.path).sidecar if side.is_file() else {}
    recorded = dataclasses.asdict(settings)
    runtime = ["tensorflow", "keras"] if clf.backend == "keras" else ["ai_edge_litert"]
    return {
        "created": utc_now(),
        "model": {
            "path": str(clf.path.resolve()), "sha256": sha, "backend": clf.backend,
            "crop_size": clf.crop_size,
            "sidecar": str(side) if side.is_file() else None,
            "class_names": trained.get("class_names"),
            "trained": {k: trained.get(k) for k in ("created", "run_name", "phase", "best_val_accuracy",
                                                     "best_epoch") if k in trained},
        },
        "data": {**{k: v for k, v in data.info.items() if k != "paths"}, "n_images": int(len(data.y)),
                 "image_size": int(data.x.shape[1]), "class_names": data.class_names},
        "settings": {
            "split": data.name, "batch_size": settings.batch_size, "tta": settings.tta, "tta_views": tta_views,
            "out_dir": str(out_dir.resolve()), "tensorboard_dir": str(log_dir.resolve()),
            "mistakes_shown": int(len(outcome.mistakes)) if settings.mistakes else 0,
            "args": {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
                     for k, v in recorded.items()},
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
        "versions": library_versions("numpy", *runtime, "sklearn"),
    }


def _print_comparison(rows: list[dict], tta: bool, out_dir: Path) -> Path:
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
    path = out_dir / COMPARISON_FILE
    atomic_write_json(path, {"created": utc_now(), "results": rows})
    print(f"wrote {path}")
    return path
