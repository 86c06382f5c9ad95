"""Fine-tuning from the shipped model vs training from scratch, side by side, on a new class set.

Images the shipped model never trained on (FER2013's PublicTest split, ../shared/fer2013/test)
are relabelled into 3 classes: positive = happy + surprise, negative = angry + disgust +
fear + sad, neutral. A stratified, seeded sample of --train-images goes to train/ (10% of it
held out for validation by data_processing.py), the rest to test/. Then, with the project's
own scripts and the same number of epochs:

  1. model_training.py --weights MODEL: head on the frozen backbone (--epochs), then the top
     2 blocks (--fine-tune-epochs);
  2. model_training.py --weights none: VGG16-BN from scratch for --epochs + --fine-tune-epochs;

each evaluated on test/ by evaluate_model.py. Prints the CPU, minutes of training and test
accuracy / macro-F1 of both, and the ratios.

    python bench/finetune_compare.py                     # the shipped model; about 10 minutes on 2 cores
    python bench/finetune_compare.py --model runs/best_model.keras --epochs 3 --fine-tune-epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from fervgg import config
from fervgg.common import cpu_description, format_table
from fervgg.imaging import list_files

ROOT = Path(__file__).resolve().parent.parent

GROUPS = {"positive": ("happy", "surprise"), "negative": ("angry", "disgust", "fear", "sad"),
          "neutral": ("neutral",)}


def build_dataset(source: Path, out: Path, train_images: int, seed: int) -> dict[str, dict[str, int]]:
    """out/{train,test}/<group>/ as symbolic links into `source`; returns the counts."""
    files = [(p, group) for group, emotions in GROUPS.items() for e in emotions for p in list_files(source / e)]
    if len(files) <= train_images:
        raise SystemExit(f"{source} has {len(files)} images; need more than --train-images {train_images}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    # Stratified: each group contributes to train in proportion to its size.
    by_group = {g: [i for i in order if files[i][1] == g] for g in GROUPS}
    for group, idx in by_group.items():
        n_train = round(train_images * len(idx) / len(files))
        for k, i in enumerate(idx):
            split = "train" if k < n_train else "test"
            path, _ = files[i]
            target = out / split / group / f"{path.parent.name}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target)
            counts[split][group] = counts[split].get(group, 0) + 1
    return counts


def run(script: str, *args) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def train_and_test(work: Path, name: str, weights: str, epochs: int, fine_tune_epochs: int, seed: int) -> dict:
    models = work / name / "models"
    start = time.perf_counter()
    run("model_training.py", "--data-dir", work / "arrays", "--models-dir", models, "--logs-dir", work / name / "logs",
        "--weights", weights, "--epochs", epochs, "--fine-tune-epochs", fine_tune_epochs, "--patience", 99,
        "--seed", seed, "--fresh")
    minutes = (time.perf_counter() - start) / 60
    model = models / (config.FINE_TUNED_MODEL if fine_tune_epochs and weights != "none" else config.BEST_MODEL)
    run("evaluate_model.py", "--model", model, "--data-dir", work / "arrays", "--split", "test",
        "--out-dir", work / name / "eval", "--logs-dir", work / name / "logs", "--mistakes", 0)
    metrics = json.loads(next((work / name / "eval").rglob("metrics.json")).read_text())["metrics"]
    return {"minutes": minutes, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(config.PRETRAINED_MODEL), help="the model to fine-tune from")
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "fer2013" / "test",
                   help="FER2013-style folder <emotion>/<images> the model never trained on")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=5, help="phase 1 epochs (head on the frozen backbone)")
    p.add_argument("--fine-tune-epochs", type=int, default=5, help="phase 2 epochs (top 2 blocks)")
    p.add_argument("--seed", type=int, default=config.SEED)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"{args.source} not found (FER2013's PublicTest split as <emotion>/ folders)")
    print(f"CPU: {cpu_description()}")
    work = Path(tempfile.mkdtemp(prefix="finetune-compare-"))
    try:
        counts = build_dataset(args.source, work / "images", args.train_images, args.seed)
        print(f"classes {list(GROUPS)}; train {counts['train']}, test {counts['test']} "
              f"(from {args.source}; 10% of train held out for validation)")
        run("data_processing.py", "--data-dir", work / "images", "--out-dir", work / "arrays", "--val-fraction", 0.1)
        total = args.epochs + args.fine_tune_epochs
        shipped = train_and_test(work, "from_model", args.model, args.epochs, args.fine_tune_epochs, args.seed)
        scratch = train_and_test(work, "from_scratch", "none", total, 0, args.seed)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    rows = [[f"from {Path(args.model).name}", f"{args.epochs} + {args.fine_tune_epochs}", shipped["minutes"],
             shipped["accuracy"], shipped["macro_f1"]],
            ["from scratch (VGG16-BN)", str(total), scratch["minutes"], scratch["accuracy"], scratch["macro_f1"]]]
    print(format_table(["start", "epochs", "minutes", "test accuracy", "test macro-F1"], rows))
    print(f"\nfrom the model: {shipped['accuracy'] - scratch['accuracy']:+.4f} accuracy, "
          f"{shipped['macro_f1'] - scratch['macro_f1']:+.4f} macro-F1, "
          f"{shipped['minutes'] / scratch['minutes']:.2f}x the training minutes of scratch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
