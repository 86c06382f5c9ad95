"""Resuming an interrupted training run: the settings that must match, the resume point
on disk (<models_dir>/.resume/: a checkpoint with optimizer state and state.json), and
the clock that carries training time across sessions. TensorFlow-free, so a wrong
resume state is reported before TensorFlow loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fervgg import config
from fervgg.common import (FervggError, atomic_save_keras, atomic_write_json, first_line, loads_json,
                           sha256_file, unique_temporary)

# Settings that must match for a run to be resumed (others, like `epochs`, may change).
RESUME_KEYS = ("weights", "batch_size", "lr", "fine_tune_lr", "fine_tune_blocks", "optimizer",
               "label_smoothing", "class_weights", "augment", "precision", "seed", "dense_units",
               "dropout", "lr_schedule", "weight_decay", "warmup_epochs")


def settings_fingerprint(settings, meta: dict) -> str:
    """What must not change for an interrupted run to be resumed: the settings (a
    train.TrainSettings) and the data. Runs saved by earlier versions must keep their hash."""
    chosen = {k: getattr(settings, k) for k in RESUME_KEYS}
    chosen["aug"] = [settings.aug_flip, settings.aug_rotation, settings.aug_zoom, settings.aug_shift,
                     settings.aug_erasing]
    if settings.crop_size:  # absent from fingerprints of runs made before cropping existed
        chosen["aug"].append(settings.crop_size)
    if settings.aug_mixup:  # likewise for mixup
        chosen["aug"].append(["mixup", settings.aug_mixup])
    if settings.initial_model:
        chosen["initial_model"] = str(settings.initial_model)
    if settings.teacher:  # likewise for distillation; the file's content, not only its name
        chosen["teacher"] = [[sha256_file(t) for t in settings.teacher], settings.teacher_weight,
                             settings.teacher_temperature]
    chosen["data"] = meta["sha256"]
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResumeState:
    """Per-epoch resume point in <models_dir>/.resume/: a full model (with optimizer state)
    and state.json, written atomically; the JSON is written last and names the model file."""

    def __init__(self, models_dir: Path, keep_epochs: bool = False):
        self.dir = Path(models_dir) / config.RESUME_DIR_NAME
        self.json_path = self.dir / "state.json"
        # keep_epochs: every checkpoint also stays in <models_dir>/epochs/<run name>/ (for
        # averaging.py), a hard link where the file system allows it, so it costs no copy.
        self.kept_dir = Path(models_dir) / config.KEPT_EPOCHS_DIR_NAME if keep_epochs else None

    def load(self) -> dict | None:
        """The saved state; None when there is none. A damaged one is an error, never
        "no state": a new run would replace the interrupted run's models."""
        if not self.json_path.is_file():
            return None
        damaged = (f"the resume state {self.json_path} is damaged ({{}}); nothing was deleted. Re-run with "
                   "`fresh` to start a new run (this replaces the interrupted run's models)")
        try:
            state = loads_json(self.json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise FervggError(damaged.format(first_line(exc, 120))) from None
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str) \
                or not isinstance(state.get("epoch", 0), int):
            raise FervggError(damaged.format("not a resume state"))
        model_file = state.get("model_file")
        if model_file and not (self.dir / model_file).is_file():
            raise FervggError(damaged.format(f"its checkpoint {model_file} is missing"))
        return state

    def save(self, model, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        model_file = f"phase{state['phase']}-epoch{state['epoch']}.keras"
        if model is not None:
            atomic_save_keras(model, self.dir / model_file)
            state["model_file"] = model_file
            if self.kept_dir is not None:
                keep(self.dir / model_file, self.kept_dir / state["run_name"] / model_file)
        atomic_write_json(self.json_path, state)
        for old in self.dir.glob("phase*-epoch*.keras"):
            if old.name != state.get("model_file"):
                old.unlink(missing_ok=True)

    def load_model(self, state: dict):
        """The checkpoint with its optimizer state; FervggError if it cannot be read."""
        path = self.dir / state["model_file"]
        from fervgg.emotion_model import keras_load

        try:
            return keras_load(path, compile=True)
        except Exception as exc:  # a truncated or damaged .keras file
            raise FervggError(f"cannot read the resume checkpoint {path} ({first_line(exc, 120)}); nothing was "
                            "deleted. Re-run with `fresh` to start a new run") from None

    def clear(self) -> None:
        for f in self.dir.glob("*"):
            f.unlink(missing_ok=True)
        if self.dir.is_dir():
            self.dir.rmdir()


def keep(source: Path, target: Path) -> None:
    """`target` becomes `source`'s content: a hard link, or a copy where links are not possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = unique_temporary(target)
    try:
        try:
            os.link(source, staging)
        except OSError:
            shutil.copyfile(source, staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


@dataclass
class Clock:
    """Training time across sessions: `started` is now minus the time already trained."""
    started: float
    budget_s: float | None = None

    def elapsed(self) -> float:
        return time.time() - self.started

    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed() >= self.budget_s
