"""Fine-tune VGG16 on the preprocessed arrays (or train it from scratch).

    preprocessed_data/{X,y}_{train,val}.npy + meta.json
      -> models/best_model.keras        phase 1: head on a frozen backbone (or from scratch)
         models/fine_tuned_model.keras  phase 2: top blocks unfrozen, lower learning rate
         models/<model>.json            effective settings, classes, data checksums, metrics
         logs/<run>/                    TensorBoard, CSV log, training_curves.png

Interrupt it at any time (Ctrl+C or kill): re-running the same command resumes at the
interrupted epoch with the optimizer state. --fresh starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import config
from artifacts import load_split, read_meta
from common import (HelpFormatter, UserError, atomic_save_keras, atomic_write_json, cpu_description, import_tensorflow,
                    onednn_enabled, run_cli)

# Settings that must match for a run to be resumed (others, like --epochs, may change).
RESUME_KEYS = ("weights", "batch_size", "lr", "fine_tune_lr", "fine_tune_blocks", "optimizer",
               "label_smoothing", "class_weights", "augment", "precision", "seed", "dense_units",
               "dropout", "lr_schedule", "weight_decay", "warmup_epochs")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train the VGG16 emotion classifier on preprocessed arrays. Re-run the same\n"
        "command after an interruption to resume; --fresh starts over.",
        formatter_class=HelpFormatter,
    )
    io = p.add_argument_group("files")
    io.add_argument("--data-dir", type=Path, default=config.PREPROCESSED_DIR,
                    help="preprocessed arrays from data_processing.py")
    io.add_argument("--models-dir", type=Path, default=config.MODELS_DIR, help="where models are written")
    io.add_argument("--logs-dir", type=Path, default=config.LOGS_DIR, help="TensorBoard and CSV logs")
    io.add_argument("--run-name", default=None,
                    help="log folder name under --logs-dir (default: run-<date>-<time>, kept on resume)")
    m = p.add_argument_group("model")
    m.add_argument("--weights", default=config.WEIGHTS,
                   help="'imagenet' (downloaded once by Keras), a path to a local VGG16 no-top weights "
                   "file, 'fer2013' (the model shipped in models/pretrained/: its backbone, a new head "
                   "for your classes; offline), a .keras model of ours to start from likewise, or "
                   "'none' to train from scratch (VGG16 with batch norm, one phase)")
    m.add_argument("--dense-units", type=int, default=config.DENSE_UNITS, help="units of the head's hidden layer")
    m.add_argument("--dropout", type=float, default=config.DROPOUT, help="dropout before the output layer")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=config.EPOCHS, help="epochs of phase 1 (the only phase from scratch)")
    t.add_argument("--fine-tune-epochs", type=int, default=config.FINE_TUNE_EPOCHS,
                   help="epochs of phase 2 (pretrained only; 0 skips it)")
    t.add_argument("--batch-size", type=int, default=config.BATCH_SIZE, help="global batch size")
    t.add_argument("--lr", type=float, default=config.LEARNING_RATE, help="learning rate of phase 1")
    t.add_argument("--fine-tune-lr", type=float, default=config.FINE_TUNE_LEARNING_RATE,
                   help="learning rate of phase 2")
    t.add_argument("--fine-tune-blocks", type=int, default=config.FINE_TUNE_BLOCKS, choices=range(1, 6),
                   help="VGG16 blocks unfrozen in phase 2, counted from the top")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam, or sgd with Nesterov momentum 0.9")
    t.add_argument("--weight-decay", type=float, default=config.WEIGHT_DECAY,
                   help="decoupled weight decay of the optimizer (Keras applies lr * decay * weight "
                   "per step; 0: none)")
    t.add_argument("--warmup-epochs", type=float, default=config.WARMUP_EPOCHS,
                   help="cosine schedule only: raise the learning rate linearly from 1%% of --lr over "
                   "this many epochs first (steadier start with SGD)")
    t.add_argument("--label-smoothing", type=float, default=config.LABEL_SMOOTHING)
    t.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight the loss by inverse class frequency")
    t.add_argument("--patience", type=int, default=config.EARLY_STOPPING_PATIENCE,
                   help="early stopping: epochs without val accuracy gain")
    t.add_argument("--lr-patience", type=int, default=config.REDUCE_LR_PATIENCE,
                   help="epochs without val loss gain before the learning rate is halved")
    t.add_argument("--lr-schedule", choices=("plateau", "cosine"), default=config.LR_SCHEDULE,
                   help="plateau: halve the learning rate when val loss stalls (--lr-patience); cosine: "
                   "decay it every batch from --lr to 1%% of it over --epochs, or over --time-budget "
                   "when one is given (so the decay ends when the budget does)")
    t.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly when the next epoch would not finish within this many minutes "
                   "of training (all phases, resumes included)")
    t.add_argument("--steps-per-epoch", type=int, default=None,
                   help="cap batches per epoch (quick smoke runs)")
    t.add_argument("--seed", type=int, default=config.SEED)
    t.add_argument("--fresh", action="store_true", help="ignore saved resume state and start over")
    a = p.add_argument_group("augmentation (training batches only)")
    a.add_argument("--no-augment", dest="augment", action="store_false", help="turn all augmentation off")
    a.add_argument("--no-flip", dest="aug_flip", action="store_false", help="no horizontal flips")
    a.add_argument("--aug-rotation", type=float, default=config.AUG_ROTATION_DEG, help="max rotation, degrees")
    a.add_argument("--aug-zoom", type=float, default=config.AUG_ZOOM, help="max zoom in/out, fraction")
    a.add_argument("--aug-shift", type=float, default=config.AUG_SHIFT, help="max shift, fraction of the side")
    a.add_argument("--aug-erasing", type=float, default=config.AUG_ERASING,
                   help="probability of erasing a random rectangle")
    h = p.add_argument_group("hardware")
    h.add_argument("--precision", choices=("auto", "mixed_bfloat16", "mixed_float16", "float32"),
                   default="auto", help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with "
                   "bfloat16 instructions, else float32")
    h.add_argument("--distribute", choices=("auto", "none", "mirrored", "multi-worker"), default="auto",
                   help="auto: MirroredStrategy over all GPUs when there are several, "
                   "MultiWorkerMirroredStrategy when TF_CONFIG is set")
    h.add_argument("--logical-cpus", type=int, default=0,
                   help="split the CPU into N logical devices and mirror over them (tests the "
                   "distributed path without GPUs)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.fine_tune_epochs < 0:
        p.error("--fine-tune-epochs must be 0 or more")
    if args.lr <= 0 or args.fine_tune_lr <= 0:
        p.error("learning rates must be positive")
    if not 0 <= args.label_smoothing < 1 or not 0 <= args.dropout < 1:
        p.error("--label-smoothing and --dropout must be in [0, 1)")
    if not 0 <= args.weight_decay < 1 or args.warmup_epochs < 0:
        p.error("--weight-decay must be in [0, 1) and --warmup-epochs 0 or more")
    if args.time_budget is not None and args.time_budget <= 0:
        p.error("--time-budget must be positive")
    if args.weights.lower() in ("none", "imagenet", "fer2013"):
        args.weights = args.weights.lower()
    return args


# ---------------------------------------------------------------- hardware

def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_hardware(args):
    """Precision policy and distribution strategy; returns (strategy, precision, description)."""
    import keras
    import tensorflow as tf

    if args.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.logical_cpus)])
    gpus = tf.config.list_physical_devices("GPU")
    precision = args.precision
    if precision == "auto":
        precision = "mixed_float16" if gpus else "mixed_bfloat16" if cpu_has_bf16() else "float32"
    keras.mixed_precision.set_global_policy(precision)

    mode = args.distribute
    if mode == "auto":
        mode = ("multi-worker" if os.environ.get("TF_CONFIG") else
                "mirrored" if len(gpus) > 1 or args.logical_cpus > 1 else "none")
    if mode == "multi-worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif mode == "mirrored":
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()
    onednn = {True: "on", False: "off", None: "unknown"}[onednn_enabled()]
    where = f"{len(gpus)} GPU(s)" if gpus else f"CPU ({cpu_description()}; oneDNN {onednn})"
    desc = f"{where}, precision {precision}" + (
        f", {type(strategy).__name__} over {strategy.num_replicas_in_sync} replicas" if mode != "none" else "")
    return strategy, precision, desc


# ---------------------------------------------------------------- data

def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over samples); classes absent from y get 0."""
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def augmenter(args, seed: int):
    """Keras preprocessing layers applied to float pixel batches 0-255."""
    import keras
    from keras import layers

    steps = []
    if args.aug_flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if args.aug_rotation > 0:
        steps.append(layers.RandomRotation(args.aug_rotation / 360.0, fill_mode="reflect", seed=seed))
    if args.aug_zoom > 0:
        steps.append(layers.RandomZoom(args.aug_zoom, fill_mode="reflect", seed=seed))
    if args.aug_shift > 0:
        steps.append(layers.RandomTranslation(args.aug_shift, args.aug_shift, fill_mode="reflect", seed=seed))
    if args.aug_erasing > 0:
        steps.append(layers.RandomErasing(factor=args.aug_erasing, scale=(0.02, 0.15),
                                          value_range=(0, 255), seed=seed))
    return keras.Sequential(steps, name="augment") if steps else None


def make_dataset(x, y, batch_size: int, training: bool, args, seed: int, n_classes: int,
                 replicas: int = 1):
    """tf.data pipeline: uint8 arrays -> shuffled float batches with one-hot labels,
    augmented when training.

    With several replicas every batch must split evenly (Keras 3 fails on an uneven last
    batch under MirroredStrategy, keras-team/keras#19246), so the image count is cut to a
    multiple of the replica count: at most replicas-1 images (a different few each epoch).
    """
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, n_classes)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if replicas > 1:
        ds = ds.take(len(x) - len(x) % replicas)
    ds = ds.batch(batch_size)
    aug = augmenter(args, seed) if training and args.augment else None

    def to_float(images, labels):
        images = tf.cast(images, tf.float32)
        if aug is not None:
            images = aug(images, training=True)
        return images, labels

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- resume state

class ResumeState:
    """Per-epoch resume point in <models-dir>/.resume/: a full model (with optimizer state)
    and state.json, written atomically; the JSON is written last and names the model file."""

    def __init__(self, models_dir: Path):
        self.dir = Path(models_dir) / config.RESUME_DIR_NAME
        self.json_path = self.dir / "state.json"

    def load(self) -> dict | None:
        if not self.json_path.is_file():
            return None
        try:
            state = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        model_file = state.get("model_file")
        if model_file and not (self.dir / model_file).is_file():
            return None
        return state

    def save(self, model, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        model_file = f"phase{state['phase']}-epoch{state['epoch']}.keras"
        if model is not None:
            atomic_save_keras(model, self.dir / model_file)
            state["model_file"] = model_file
        atomic_write_json(self.json_path, state)
        for old in self.dir.glob("phase*-epoch*.keras"):
            if old.name != state.get("model_file"):
                old.unlink(missing_ok=True)

    def clear(self) -> None:
        for f in self.dir.glob("*"):
            f.unlink(missing_ok=True)
        if self.dir.is_dir():
            self.dir.rmdir()


def settings_fingerprint(args, meta: dict) -> str:
    chosen = {k: getattr(args, k) for k in RESUME_KEYS}
    chosen["aug"] = [args.aug_flip, args.aug_rotation, args.aug_zoom, args.aug_shift, args.aug_erasing]
    chosen["data"] = meta["sha256"]
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- callbacks

def cosine_lr(base_lr: float, progress: float, floor: float = 0.01) -> float:
    """Cosine from base_lr (progress 0) down to floor * base_lr (progress >= 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_callbacks(phase: int, model_path: Path, log_dir: Path, resume: ResumeState, state: dict,
                   started: float, budget_s: float | None, args):
    """Best checkpoint, resumable early stopping / LR schedule, logs, time budget, resume point."""
    import keras

    saved = state.get("callbacks", {}) if state.get("phase") == phase else {}

    class BestCheckpoint(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = saved.get("best_val_accuracy", -1.0)
            self.best_epoch = saved.get("best_epoch")

        def on_epoch_end(self, epoch, logs=None):
            acc = (logs or {}).get("val_accuracy")
            if acc is not None and acc > self.best:
                print(f"\nepoch {epoch + 1}: val_accuracy improved to {acc:.4f}, saving {model_path}")
                self.best, self.best_epoch = float(acc), epoch + 1
                atomic_save_keras(self.model, model_path)

    class Stopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if "early_stopping" in saved:
                self.wait = saved["early_stopping"]["wait"]
                self.best = saved["early_stopping"]["best"]

    class ReduceLR(keras.callbacks.ReduceLROnPlateau):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if "reduce_lr" in saved:
                self.wait = saved["reduce_lr"]["wait"]
                self.best = saved["reduce_lr"]["best"]
                self.cooldown_counter = saved["reduce_lr"]["cooldown_counter"]

    class TimeBudget(keras.callbacks.Callback):
        """Stops before an epoch that would overrun the budget (or mid-epoch past it)."""

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()

        def on_train_batch_end(self, batch, logs=None):
            if budget_s is not None and time.time() - started > budget_s:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if budget_s is None:
                return
            elapsed = time.time() - started
            if elapsed + (time.time() - self.epoch_start) > budget_s:
                print(f"\ntime budget: {elapsed / 60:.1f} of {budget_s / 60:.1f} min used; "
                      "another epoch would not fit, stopping (best checkpoint kept)")
                self.model.stop_training = True

    best = BestCheckpoint()
    stopping = Stopping(monitor="val_accuracy", patience=args.patience, mode="max", verbose=1)
    reduce_lr = ReduceLR(monitor="val_loss", factor=config.REDUCE_LR_FACTOR, patience=args.lr_patience,
                         min_lr=1e-7, verbose=1)

    class CosineDecay(keras.callbacks.Callback):
        """Per-batch cosine decay; progress is wall time over the budget when there is one."""

        def __init__(self, base_lr: float, epochs: int):
            super().__init__()
            self.base_lr, self.epochs = base_lr, epochs

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            steps = self.params.get("steps") or 1
            epochs_done = self.epoch + batch / steps
            if budget_s is not None:
                progress = (time.time() - started) / budget_s
            else:
                progress = epochs_done / self.epochs
            lr = cosine_lr(self.base_lr, progress)
            if epochs_done < args.warmup_epochs:
                lr *= 0.01 + 0.99 * epochs_done / args.warmup_epochs
            self.model.optimizer.learning_rate = lr

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:  # logged like ReduceLROnPlateau does, for the CSV and TensorBoard
                logs["learning_rate"] = float(self.model.optimizer.learning_rate)

    class SaveResumePoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            state.update(phase=phase, epoch=epoch + 1, elapsed_seconds=time.time() - started, callbacks={
                "best_val_accuracy": best.best, "best_epoch": best.best_epoch,
                "early_stopping": {"wait": stopping.wait, "best": float(stopping.best)},
            })
            if schedule is reduce_lr:
                state["callbacks"]["reduce_lr"] = {"wait": reduce_lr.wait, "best": float(reduce_lr.best),
                                                   "cooldown_counter": reduce_lr.cooldown_counter}
            resume.save(self.model, state)

    schedule = (CosineDecay(args.fine_tune_lr if phase == 2 else args.lr,
                            args.fine_tune_epochs if phase == 2 else args.epochs)
                if args.lr_schedule == "cosine" else reduce_lr)
    log_dir.mkdir(parents=True, exist_ok=True)
    return best, [
        best, stopping, schedule, TimeBudget(),
        keras.callbacks.CSVLogger(str(log_dir / f"phase{phase}.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(log_dir / f"phase{phase}"), update_freq="epoch"),
        SaveResumePoint(),  # last: sees the other callbacks' state after this epoch
    ]


# ---------------------------------------------------------------- training

def make_optimizer(name: str, lr: float, weight_decay: float = 0.0):
    import keras

    decay = weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=decay)
    return keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)


def compile_model(model, args, lr: float):
    import keras

    # One-hot labels (see make_dataset) so label smoothing is a built-in loss option.
    model.compile(optimizer=make_optimizer(args.optimizer, lr, args.weight_decay),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                  metrics=["accuracy"])


def run_phase(phase: int, args, strategy, meta, train, val, state, resume, run_dir, started, budget_s):
    """Train one phase to its best checkpoint; returns (model path, best val acc, best epoch, epochs run)."""
    import keras

    pretrained = args.weights != "none"
    model_path = args.models_dir / (config.FINE_TUNED_MODEL if phase == 2 else config.BEST_MODEL)
    epochs = args.fine_tune_epochs if phase == 2 else args.epochs
    lr = args.fine_tune_lr if phase == 2 else args.lr
    initial_epoch = 0
    with strategy.scope():
        if state.get("phase") == phase and state.get("model_file"):
            model = keras.models.load_model(resume.dir / state["model_file"], safe_mode=True, compile=True)
            initial_epoch = state["epoch"]
            print(f"resuming phase {phase} at epoch {initial_epoch + 1} of {epochs} "
                  f"(optimizer state restored from {resume.dir / state['model_file']})")
        else:
            if phase == 1:
                keras.utils.set_random_seed(args.seed)
                from emotion_model import build_model, set_backbone_trainable

                model = build_model(len(meta["class_names"]), meta["image_size"], args.weights,
                                    args.dense_units, args.dropout)
                if pretrained:
                    set_backbone_trainable(model, 0)
            else:
                from emotion_model import load_model, set_backbone_trainable

                model = load_model(args.models_dir / config.BEST_MODEL, float32=False)
                set_backbone_trainable(model, args.fine_tune_blocks)
            compile_model(model, args, lr)
    if initial_epoch >= epochs:
        print(f"phase {phase}: {initial_epoch} epochs already done")
        return model_path, state["callbacks"]["best_val_accuracy"], state["callbacks"]["best_epoch"], 0

    what = ("head on a frozen VGG16" if pretrained and phase == 1 else
            f"top {args.fine_tune_blocks} VGG16 blocks + head" if phase == 2 else "VGG16-BN from scratch")
    print(f"\nphase {phase}: training {what}, lr {lr:g}, up to {epochs} epochs -> {model_path}")
    seed = args.seed + phase
    n_classes = len(meta["class_names"])
    replicas = strategy.num_replicas_in_sync
    train_ds = make_dataset(train.x, train.y, args.batch_size, True, args, seed, n_classes, replicas)
    val_ds = make_dataset(val.x, val.y, args.batch_size, False, args, seed, n_classes, replicas)
    best, callbacks = make_callbacks(phase, model_path, run_dir, resume, state, started, budget_s, args)
    weights = class_weights(train.y, len(meta["class_names"])) if args.class_weights else None
    with deferred_interrupts() as interrupt_check:
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                            class_weight=weights, callbacks=[*callbacks, interrupt_check],
                            steps_per_epoch=args.steps_per_epoch, shuffle=False,
                            verbose=2 if not sys.stdout.isatty() else 1)
    return model_path, best.best, best.best_epoch, len(history.epoch)


@contextlib.contextmanager
def deferred_interrupts():
    """Ctrl+C / SIGTERM during fit() take effect at the next batch end, a second one at once.

    A KeyboardInterrupt raised while tf.data fetches a batch is swallowed by Keras as "input
    ran out of data" and training goes on (seen in a test run), so the signal only sets a flag
    here and a callback raises the interrupt from Python at a safe point. It goes last in the
    callback list, so an epoch that has just ended is saved for resuming first.
    """
    import keras

    requested = []

    def on_signal(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        print("\ninterrupt received: stopping after this batch (again to stop at once)",
              file=sys.stderr, flush=True)

    class RaiseWhenRequested(keras.callbacks.Callback):
        def _check(self, *_, **__):
            if requested:
                raise KeyboardInterrupt

        on_train_batch_end = on_test_batch_end = on_epoch_end = _check

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield RaiseWhenRequested()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if requested:  # arrived after the last batch: still an interruption
        raise KeyboardInterrupt


def library_versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__}


def write_sidecar(model_path: Path, args, meta, run_name, phase, best_acc, best_epoch, hw, elapsed):
    info = {
        "model": model_path.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "class_names": meta["class_names"],
        "image_size": meta["image_size"],
        "input": f"raw grayscale pixels 0-255, shape (N, {meta['image_size']}, {meta['image_size']}, 1)",
        "phase": phase,
        "best_val_accuracy": best_acc,
        "best_epoch": best_epoch,
        "training_seconds": round(elapsed, 1),
        "run_name": run_name,
        "hardware": hw,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"dir": str(args.data_dir.resolve()), "sha256": meta["sha256"], "counts": meta["counts"]},
        "versions": library_versions(),
    }
    atomic_write_json(model_path.with_suffix(".json"), info)


def plot_curves(run_dir: Path) -> Path | None:
    """training_curves.png from the phases' CSV logs (accuracy and loss, train and val)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for phase in (1, 2):
        f = run_dir / f"phase{phase}.csv"
        if f.is_file():
            with open(f) as fh:
                rows += [dict(r, phase=phase) for r in csv.DictReader(fh)]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(1, len(rows) + 1)
    for ax, key in zip(axes, ("accuracy", "loss")):
        for prefix, style in (("", "-"), ("val_", "--")):
            ax.plot(x, [float(r.get(prefix + key, "nan") or "nan") for r in rows], style,
                    label=(prefix or "train_") + key)
        switch = sum(r["phase"] == 1 for r in rows)
        if switch < len(rows):
            ax.axvline(switch + 0.5, color="gray", lw=0.8)
            ax.text(switch + 0.6, ax.get_ylim()[1], " phase 2", va="top", fontsize=8, color="gray")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = run_dir / "training_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = read_meta(args.data_dir)
    train = load_split(args.data_dir, "train", meta)
    val = load_split(args.data_dir, "val", meta)
    if len(train.y) == 0 or len(val.y) == 0:
        raise UserError(f"need training and validation images; got {len(train.y)} and {len(val.y)} "
                        "(re-run data_processing.py with a non-zero --val-fraction)")
    resume = ResumeState(args.models_dir)
    fingerprint = settings_fingerprint(args, meta)
    state = None if args.fresh else resume.load()
    if args.fresh:
        resume.clear()
    if state and state.get("fingerprint") != fingerprint:
        raise UserError(f"{resume.dir} holds an interrupted run with other settings or data; re-run "
                        "with the same flags to resume it, or add --fresh to start over")
    print(f"data: {len(train.y)} train / {len(val.y)} val images, {meta['image_size']}x{meta['image_size']}, "
          f"classes {meta['class_names']}")

    import_tensorflow()  # after argument checks: --help and errors stay fast

    strategy, _, hw = setup_hardware(args)
    print(f"hardware: {hw}")
    if args.batch_size % strategy.num_replicas_in_sync:
        raise UserError(f"--batch-size {args.batch_size} must be a multiple of the "
                        f"{strategy.num_replicas_in_sync} replicas")
    if state is None:
        run_name = args.run_name or datetime.now().strftime("run-%Y%m%d-%H%M%S")
        state = {"fingerprint": fingerprint, "run_name": run_name, "phase": 1, "epoch": 0,
                 "elapsed_seconds": 0.0, "phases_done": []}
        if not args.fresh:
            print("no interrupted run found: starting a new run")
        # A new run replaces the previous run's models, so a stale phase-2 model is never picked.
        for stale in (config.BEST_MODEL, config.FINE_TUNED_MODEL):
            for f in (args.models_dir / stale, (args.models_dir / stale).with_suffix(".json")):
                f.unlink(missing_ok=True)
    else:
        print(f"resuming run {state['run_name']} ({state['elapsed_seconds'] / 60:.1f} min trained so far)")
    run_name = state["run_name"]
    run_dir = args.logs_dir / run_name
    budget_s = args.time_budget * 60 if args.time_budget else None
    started = time.time() - state.get("elapsed_seconds", 0.0)
    phases = (1, 2) if args.weights != "none" and args.fine_tune_epochs > 0 else (1,)
    results = {}
    try:
        train_phases(phases, args, strategy, meta, train, val, state, resume, run_dir, started,
                     budget_s, hw, results)
    except KeyboardInterrupt:
        done = state.get("epoch", 0)
        print(f"\ninterrupted: phase {state.get('phase', 1)}, {done} epoch(s) saved. Re-run the same "
              "command to resume (or add --fresh to start over).", file=sys.stderr)
        return 130
    resume.clear()
    curves = plot_curves(run_dir)
    print("\ntraining done in {:.1f} min".format((time.time() - started) / 60))
    for phase, (path, acc, epoch) in results.items():
        print(f"  phase {phase}: best val_accuracy {acc:.4f} at epoch {epoch} -> {path}")
    if curves:
        print(f"  curves: {curves}")
    print(f"  TensorBoard: tensorboard --logdir {args.logs_dir}")
    return 0


def train_phases(phases, args, strategy, meta, train, val, state, resume, run_dir, started, budget_s,
                 hw, results) -> None:
    run_name = state["run_name"]
    for phase in phases:
        if phase in state.get("phases_done", []):
            continue
        if budget_s is not None and time.time() - started >= budget_s:
            print(f"time budget spent: skipping phase {phase}")
            break
        model_path, best_acc, best_epoch, _ = run_phase(phase, args, strategy, meta, train, val, state,
                                                        resume, run_dir, started, budget_s)
        if best_epoch is None:
            raise UserError(f"phase {phase} ended before any epoch finished; nothing was saved")
        write_sidecar(model_path, args, meta, run_name, phase, best_acc, best_epoch, hw, time.time() - started)
        results[phase] = (model_path, best_acc, best_epoch)
        state["phases_done"] = state.get("phases_done", []) + [phase]
        state.update(phase=phase + 1, epoch=0, callbacks={}, model_file=None,
                     elapsed_seconds=time.time() - started)
        resume.save(None, state)


if __name__ == "__main__":
    run_cli(main)
