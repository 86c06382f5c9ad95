"""Training a model on the preprocessed arrays: `train(TrainSettings(...)) -> TrainResult`.

    <data_dir>/{X,y}_{train,val}.npy + meta.json
      -> <models_dir>/best_model.keras        phase 1: head on a frozen backbone (or from scratch)
         <models_dir>/fine_tuned_model.keras  phase 2: top blocks unfrozen, lower learning rate
         <models_dir>/<model>.json            effective settings, classes, data checksums, metrics
         <logs_dir>/<run>/                    TensorBoard, CSV log, training_curves.png

After every epoch the run is saved in <models_dir>/.resume/; calling train() again with
the same settings continues there (Ctrl+C raises TrainingInterrupted once that is saved).
The pieces (input pipeline, callbacks, curves) are fervgg.training's; this module puts
them together. TensorFlow is imported only after the settings and data are checked.
"""

from __future__ import annotations

import dataclasses
import errno
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from fervgg import config
from fervgg.artifacts import Split, load_split, load_teachers, read_meta
from fervgg.common import DISK_ERRORS, FervggError, folder_lock, import_tensorflow, writable_folder
from fervgg.hardware import DISTRIBUTE_MODES, PRECISIONS, setup_hardware
from fervgg.resume import Clock, ResumeState, settings_fingerprint
from fervgg.settings import check_choice, check_settings

OPTIMIZERS = ("adam", "sgd")  # sgd: with Nesterov momentum 0.9
LR_SCHEDULES = ("plateau", "cosine")


@dataclass
class TrainSettings:
    """Every setting of a training run (model_training.py has a flag for each). The order is
    that of the model sidecar's "config"; checked and normalised on creation."""
    data_dir: Path = config.PREPROCESSED_DIR  # the arrays of data_processing.py
    models_dir: Path = config.MODELS_DIR
    logs_dir: Path = config.LOGS_DIR
    run_name: str | None = None  # log folder under logs_dir (None: run-<date>-<time>, kept on resume)
    weights: str = config.WEIGHTS  # "imagenet", "fer2013", "none", a .keras model of ours or a weights file
    initial_model: Path | None = None  # with weights "none": every weight from this model of ours
    dense_units: int = config.DENSE_UNITS
    dropout: float = config.DROPOUT
    epochs: int = config.EPOCHS  # phase 1 (the only phase from scratch)
    fine_tune_epochs: int = config.FINE_TUNE_EPOCHS  # phase 2 (pretrained only; 0 skips it)
    batch_size: int = config.BATCH_SIZE  # global, over all replicas
    lr: float = config.LEARNING_RATE
    fine_tune_lr: float = config.FINE_TUNE_LEARNING_RATE
    fine_tune_blocks: int = config.FINE_TUNE_BLOCKS  # VGG16 blocks unfrozen in phase 2, from the top
    optimizer: str = config.OPTIMIZER  # OPTIMIZERS
    weight_decay: float = config.WEIGHT_DECAY
    warmup_epochs: float = config.WARMUP_EPOCHS  # cosine schedule only
    label_smoothing: float = config.LABEL_SMOOTHING
    class_weights: bool = True  # weight the loss by inverse class frequency
    patience: int = config.EARLY_STOPPING_PATIENCE
    lr_patience: int = config.REDUCE_LR_PATIENCE
    lr_schedule: str = config.LR_SCHEDULE  # LR_SCHEDULES
    time_budget: float | None = None  # minutes of training, all phases and resumes together
    steps_per_epoch: int | None = None
    seed: int = config.SEED
    fresh: bool = False  # ignore a saved resume state and start over
    keep_epochs: bool = False  # keep every epoch's checkpoint in models_dir/epochs/<run name>/ (averaging.py)
    augment: bool = True
    aug_flip: bool = True
    aug_rotation: float = config.AUG_ROTATION_DEG
    aug_zoom: float = config.AUG_ZOOM
    aug_shift: float = config.AUG_SHIFT
    crop_size: int | None = None  # None: the starting model's when it is one of ours, else config.CROP_SIZE
    aug_erasing: float = config.AUG_ERASING
    aug_mixup: float = config.AUG_MIXUP  # mixup's alpha, 0: off
    teacher: list[Path] | None = None  # distillation: (N_train, C) probabilities .npy files, averaged
    teacher_weight: float = config.TEACHER_WEIGHT  # the teacher's share of each target
    teacher_temperature: float = config.TEACHER_TEMPERATURE  # softens the teacher (training.soft_targets)
    precision: str = config.PRECISION  # fervgg.hardware.PRECISIONS
    distribute: str = "auto"  # fervgg.hardware.DISTRIBUTE_MODES
    logical_cpus: int = 0

    # Bounds of the numbers (fervgg.settings.out_of_range); the flags use the same.
    RANGES: ClassVar[dict[str, dict]] = {
        "dense_units": {"low": 1}, "dropout": {"low": 0, "below": 1}, "epochs": {"low": 1},
        "fine_tune_epochs": {"low": 0}, "batch_size": {"low": 1}, "lr": {"above": 0, "high": 10},
        "fine_tune_lr": {"above": 0, "high": 10}, "fine_tune_blocks": {"low": 1, "high": 5},
        "weight_decay": {"low": 0, "below": 1}, "warmup_epochs": {"low": 0},
        "label_smoothing": {"low": 0, "below": 1}, "patience": {"low": 1}, "lr_patience": {"low": 1},
        "time_budget": {"above": 0}, "steps_per_epoch": {"low": 1}, "seed": {"low": 0},
        "aug_rotation": {"low": 0, "high": 180}, "aug_zoom": {"low": 0, "below": 1},
        "aug_shift": {"low": 0, "below": 1}, "crop_size": {"low": 0}, "aug_erasing": {"low": 0, "high": 1},
        "aug_mixup": {"low": 0, "high": 10}, "teacher_weight": {"low": 0, "high": 1},
        "teacher_temperature": {"above": 0, "high": 100},
        "logical_cpus": {"low": 0, "high": 64},
    }

    def __post_init__(self):
        check_settings(self, self.RANGES)
        for name, choices in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                              ("precision", PRECISIONS), ("distribute", DISTRIBUTE_MODES)):
            check_choice(name, getattr(self, name), choices)
        if self.weights.lower() in ("none", "imagenet", "fer2013"):
            self.weights = self.weights.lower()
        if self.initial_model is not None:
            if self.weights != "none":
                raise FervggError("`initial_model` needs `weights` none (it replaces the starting weights)")
            self.initial_model = Path(config.PRETRAINED_MODEL if str(self.initial_model) == "fer2013"
                                      else self.initial_model)
        if self.run_name is not None:
            check_run_name(self.run_name)
        if self.teacher is not None:
            teachers = [self.teacher] if isinstance(self.teacher, (str, Path)) else list(self.teacher)
            if not teachers:
                raise FervggError("`teacher` needs at least one probabilities file")
            self.teacher = [Path(t) for t in teachers]
        elif (self.teacher_weight, self.teacher_temperature) != (config.TEACHER_WEIGHT, config.TEACHER_TEMPERATURE):
            raise FervggError("`teacher_weight` and `teacher_temperature` need a `teacher`")

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


def start_crop_size(settings: TrainSettings, image_size: int) -> int:
    """The crop size of a run that does not set one: the starting model's (its sidecar's), so
    fine-tuning the shipped model keeps the input it was trained on, and at that model's cost
    per image; config.CROP_SIZE when training starts from ImageNet, a weights file or scratch,
    or when the model takes another image size than the data (loading it then says so)."""
    from fervgg.emotion_model import is_model_file, model_info, resolve_weights

    if settings.initial_model is not None:
        start = settings.initial_model
    elif is_model_file(settings.weights):
        start = Path(resolve_weights(settings.weights)).expanduser()
    else:
        return config.CROP_SIZE
    if not start.is_file():
        return config.CROP_SIZE  # the "model to start from not found" error comes with the model
    info = model_info(start)
    crop = info.crop_size if info.image_size == image_size else config.CROP_SIZE
    if crop:
        print(f"crop size {crop}: the starting model's ({start.name} was trained on {crop}x{crop} crops; "
              "`crop_size` 0 turns cropping off)")
    return crop


def check_run_name(name: str) -> None:
    """A run name is one folder name under `logs_dir`: no separators, no "." or "..", so the
    logs can never land outside it."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or not name.isprintable():
        raise FervggError(f"`run_name` {name!r} must be a plain folder name (no /, \\, '.' or '..'): "
                          "the run's logs go in a folder of that name under `logs_dir`")


@dataclass
class PhaseResult:
    model_path: Path  # the best checkpoint, with its .json sidecar beside it
    best_val_accuracy: float
    best_epoch: int


@dataclass
class TrainResult:
    run_name: str
    run_dir: Path  # logs: TensorBoard, CSV, training_curves.png
    phases: dict[int, PhaseResult] = field(default_factory=dict)  # trained by this call (a resume skips done ones)
    training_seconds: float = 0.0  # all sessions of the run
    hardware: str = ""
    curves: Path | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped training; `epoch` epochs of `phase` are saved for resuming."""

    def __init__(self, phase: int, epoch: int):
        super().__init__(f"interrupted in phase {phase}, {epoch} epoch(s) saved")
        self.phase, self.epoch = phase, epoch


def train(settings: TrainSettings) -> TrainResult:
    """Train (or resume) the run `settings` describe; progress goes to stdout."""
    meta = read_meta(settings.data_dir)
    if settings.crop_size is None:
        settings = dataclasses.replace(settings, crop_size=start_crop_size(settings, meta["image_size"]))
    train_split = load_split(settings.data_dir, "train", meta)
    val_split = load_split(settings.data_dir, "val", meta)
    teacher = (load_teachers(settings.teacher, len(train_split.y), len(meta["class_names"]))
               if settings.teacher is not None else None)
    if settings.crop_size and not 32 <= settings.crop_size < meta["image_size"]:
        raise FervggError(f"`crop_size` {settings.crop_size} must be at least 32 and below the image size "
                          f"{meta['image_size']} (or 0 for no cropping)")
    if len(train_split.y) == 0 or len(val_split.y) == 0:
        raise FervggError(f"need training and validation images; got {len(train_split.y)} and "
                          f"{len(val_split.y)} (re-run data_processing.py with a larger `val_fraction`: "
                          "on small classes it rounds to 0)")
    if len(meta["class_names"]) < 2:
        raise FervggError(f"{settings.data_dir} holds {len(meta['class_names'])} class(es) "
                          f"{meta['class_names']}: a classifier needs at least 2 classes (one folder per class)")
    writable_folder(settings.models_dir, "`models_dir`")
    writable_folder(settings.logs_dir, "`logs_dir`")
    with folder_lock(settings.models_dir, "a training run") as holder:
        return _train_locked(settings, meta, train_split, val_split, holder, teacher)


def _train_locked(settings: TrainSettings, meta: dict, train_split: Split, val_split: Split,
                  holder: Callable[[str], None], teacher: np.ndarray | None = None) -> TrainResult:
    resume, state, fingerprint = start_or_resume(settings, meta)
    print(f"data: {len(train_split.y)} train / {len(val_split.y)} val images, "
          f"{meta['image_size']}x{meta['image_size']}, classes {meta['class_names']}")
    if teacher is not None:
        agree = float((teacher.argmax(axis=1) == train_split.y).mean())
        names = " + ".join(str(t) for t in settings.teacher)
        print(f"distillation: teacher {names} (agrees with the labels on {agree:.1%} of train), "
              f"weight {settings.teacher_weight:g}, temperature {settings.teacher_temperature:g}")

    import_tensorflow()  # after the checks: errors stay fast

    strategy, hardware = setup_hardware(settings.precision, settings.distribute, settings.logical_cpus)
    print(f"hardware: {hardware}")
    if settings.batch_size % strategy.num_replicas_in_sync:
        raise FervggError(f"`batch_size` {settings.batch_size} must be a multiple of the "
                          f"{strategy.num_replicas_in_sync} replicas")
    if state is None:
        state = new_state(settings, fingerprint)
    else:
        print(f"resuming run {state['run_name']} ({state['elapsed_seconds'] / 60:.1f} min trained so far)")
    holder(f"training run {state['run_name']}")
    clock = Clock(time.time() - state.get("elapsed_seconds", 0.0),
                  settings.time_budget * 60 if settings.time_budget else None)
    run = TrainingRun(settings, meta, train_split, val_split, state, resume, clock, strategy, hardware, teacher)
    try:
        phases = train_phases(run)
    except KeyboardInterrupt:
        raise TrainingInterrupted(state.get("phase", 1), state.get("epoch", 0)) from None
    except OSError as exc:  # a full disk while saving: the files saved before are whole (atomic writes)
        if exc.errno not in DISK_ERRORS:
            raise
        fix = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make it writable"
        raise FervggError(f"cannot save {exc.filename or 'a checkpoint'}: {exc.strerror or exc}; "
                          f"{state.get('epoch', 0)} epoch(s) of phase {state.get('phase', 1)} are saved: {fix} "
                          "and re-run with the same settings to resume") from None
    from fervgg import training

    resume.clear()
    try:
        curves = training.plot_curves(run.run_dir)
    except OSError as exc:  # the logs' disk: the models are saved already, say so rather than fail
        if exc.errno not in DISK_ERRORS:
            raise
        curves = None
        saved = ", ".join(str(r.model_path) for r in phases.values()) or str(settings.models_dir)
        print(f"warning: cannot write the training curves in {run.run_dir}: {exc.strerror or exc}; "
              f"the models are saved ({saved})", file=sys.stderr)
    return TrainResult(state["run_name"], run.run_dir, phases, clock.elapsed(), hardware, curves)


# ---------------------------------------------------------------- the run

@dataclass
class TrainingRun:
    """Everything one training run works from, in one record."""
    settings: TrainSettings
    meta: dict  # the data's meta.json
    train: Split
    val: Split
    state: dict  # resume state: fingerprint, run name, phase, epoch, callbacks' counters
    resume: ResumeState
    clock: Clock
    strategy: object
    hardware: str
    teacher: np.ndarray | None = None  # distillation: (N_train, C) probabilities

    @property
    def run_dir(self) -> Path:
        return self.settings.logs_dir / self.state["run_name"]

    def phases(self) -> tuple[int, ...]:
        return (1, 2) if self.settings.pretrained and self.settings.fine_tune_epochs > 0 else (1,)


def start_or_resume(settings: TrainSettings, meta: dict) -> tuple[ResumeState, dict | None, str]:
    """The resume state to continue (None: a new run) and the settings' fingerprint."""
    resume = ResumeState(settings.models_dir, settings.keep_epochs)
    fingerprint = settings_fingerprint(settings, meta)
    if settings.fresh:
        resume.clear()
        return resume, None, fingerprint
    state = resume.load()
    if state and state.get("fingerprint") != fingerprint:
        raise FervggError(f"{resume.dir} holds an interrupted run with other settings or data; re-run "
                          "with the same settings to resume it, or add `fresh` to start over")
    return resume, state, fingerprint


def new_state(settings: TrainSettings, fingerprint: str) -> dict:
    if not settings.fresh:
        print("no interrupted run found: starting a new run")
    # The previous run's models stay until this run saves its first checkpoint; they then
    # move to models/previous/ (training.BestCheckpoint).
    run_name = settings.run_name or datetime.now().strftime("run-%Y%m%d-%H%M%S")
    return {"fingerprint": fingerprint, "run_name": run_name, "phase": 1, "epoch": 0,
            "elapsed_seconds": 0.0, "phases_done": []}


def build_or_load(run: TrainingRun, phase: int, epochs: int) -> tuple[object, int]:
    """The phase's model, compiled, and the epoch it starts at (a resume point's, or 0)."""
    import keras

    from fervgg import training
    from fervgg.emotion_model import build_model, load_model, set_backbone_trainable

    settings, state = run.settings, run.state
    if state.get("phase") == phase and state.get("model_file"):
        model = run.resume.load_model(state)
        print(f"resuming phase {phase} at epoch {state['epoch'] + 1} of {epochs} "
              f"(optimizer state restored from {run.resume.dir / state['model_file']})")
        return model, state["epoch"]
    if phase == 1:
        keras.utils.set_random_seed(settings.seed)
        model = build_model(len(run.meta["class_names"]), run.meta["image_size"], settings.weights,
                            settings.dense_units, settings.dropout, settings.crop_size)
        if settings.initial_model is not None:
            copy_weights(load_model(settings.initial_model), model, settings.initial_model)
        if settings.pretrained:
            set_backbone_trainable(model, 0)
    else:
        model = load_model(settings.models_dir / config.BEST_MODEL, float32=False)
        set_backbone_trainable(model, settings.fine_tune_blocks)
    lr = settings.fine_tune_lr if phase == 2 else settings.lr
    training.compile_model(model, settings.optimizer, lr, settings.weight_decay, settings.label_smoothing)
    return model, 0


def copy_weights(source, model, path: Path) -> None:
    """Every weight of `source` into `model` (same layout; a crop layer has no weights)."""
    import numpy as np

    theirs, ours = source.get_weights(), model.weights
    if len(theirs) != len(ours) or any(tuple(w.shape) != tuple(v.shape) for w, v in zip(theirs, ours)):
        raise FervggError(f"`initial_model` {path} has another layout than this run's model (classes, "
                          "`dense_units`, backbone): it cannot be continued")
    model.set_weights([np.asarray(w).astype(v.dtype) for w, v in zip(theirs, ours)])
    print(f"starting from every weight of {path}")


def data_seed(seed: int, phase: int, start_epoch: int) -> int:
    """The seed of a phase's shuffling and augmentation when it starts at `start_epoch`. A
    resumed run must not reuse the fresh run's seed: each resumed process would replay the run's
    epoch orders from epoch 1 on (and many of its crops), already trained on (found in the long v2
    run of issue 18: training accuracy jumped 4-7 points after resumes while validation slipped,
    and fell back on trend once the seed changed). A fresh start keeps the seed earlier
    versions used."""
    return seed + phase + 1_000_003 * start_epoch


def run_phase(run: TrainingRun, phase: int) -> PhaseResult:
    """Train one phase to its best checkpoint."""
    from fervgg.training import (Augmentation, class_weights, deferred_interrupts, make_dataset, phase_callbacks,
                                 soft_targets)

    settings = run.settings
    model_path = settings.models_dir / (config.FINE_TUNED_MODEL if phase == 2 else config.BEST_MODEL)
    epochs = settings.fine_tune_epochs if phase == 2 else settings.epochs
    lr = settings.fine_tune_lr if phase == 2 else settings.lr
    with run.strategy.scope():
        model, initial_epoch = build_or_load(run, phase, epochs)
    if initial_epoch >= epochs:
        print(f"phase {phase}: {initial_epoch} epochs already done")
        saved = run.state["callbacks"]
        return PhaseResult(model_path, saved["best_val_accuracy"], saved["best_epoch"])

    what = ("head on a frozen VGG16" if settings.pretrained and phase == 1 else
            f"top {settings.fine_tune_blocks} VGG16 blocks + head" if phase == 2 else
            f"VGG16-BN from {settings.initial_model.name}'s weights" if settings.initial_model is not None else
            "VGG16-BN from scratch")
    print(f"\nphase {phase}: training {what}, lr {lr:g}, up to {epochs} epochs -> {model_path}")
    seed = data_seed(settings.seed, phase, initial_epoch)
    if initial_epoch:
        import keras

        keras.utils.set_random_seed(seed)  # dropout and the rest of Keras's randomness likewise
    n_classes = len(run.meta["class_names"])
    replicas = run.strategy.num_replicas_in_sync
    augmentation = Augmentation(settings.aug_flip, settings.aug_rotation, settings.aug_zoom, settings.aug_shift,
                                settings.aug_erasing, settings.crop_size,
                                settings.aug_mixup) if settings.augment else None
    targets = (soft_targets(run.train.y, n_classes, run.teacher, settings.teacher_weight, settings.teacher_temperature)
               if run.teacher is not None else run.train.y)
    train_ds = make_dataset(run.train.x, targets, settings.batch_size, n_classes, seed, augmentation,
                            shuffle=True, replicas=replicas)
    val_ds = make_dataset(run.val.x, run.val.y, settings.batch_size, n_classes, seed, replicas=replicas)
    best, callbacks = phase_callbacks(phase, model_path, run.run_dir, run.resume, run.state, run.clock,
                                      settings.lr_schedule, lr, epochs, settings.patience, settings.lr_patience,
                                      settings.warmup_epochs)
    weights = class_weights(run.train.y, n_classes) if settings.class_weights else None
    with deferred_interrupts() as interrupt_check:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                  class_weight=weights, callbacks=[*callbacks, interrupt_check],
                  steps_per_epoch=settings.steps_per_epoch, shuffle=False,
                  verbose=2 if not sys.stdout.isatty() else 1)
    return PhaseResult(model_path, best.best, best.best_epoch)


def train_phases(run: TrainingRun) -> dict[int, PhaseResult]:
    """Each phase not done yet, its sidecar written when it ends."""
    from fervgg.emotion_model import write_sidecar

    results = {}
    for phase in run.phases():
        if phase in run.state.get("phases_done", []):
            continue
        if run.clock.spent():
            print(f"time budget spent: skipping phase {phase}")
            break
        result = run_phase(run, phase)
        if result.best_epoch is None:
            raise FervggError(f"phase {phase} ended before any epoch finished; nothing was saved")
        write_sidecar(result.model_path, run.settings, run.meta, run.state["run_name"], phase,
                      result.best_val_accuracy, result.best_epoch, run.hardware, run.clock.elapsed())
        results[phase] = result
        run.state["phases_done"] = run.state.get("phases_done", []) + [phase]
        run.state.update(phase=phase + 1, epoch=0, callbacks={}, model_file=None,
                         elapsed_seconds=run.clock.elapsed())
        run.resume.save(None, run.state)
    return results
