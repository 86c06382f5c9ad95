"""The pieces of a training run, each with explicit inputs: the input pipeline and its
augmentation, optimizer and loss, the resume point on disk, the learning-rate schedule
and the callbacks (best checkpoint, resumable early stopping and plateau schedule, time
budget, resume point, Ctrl+C at a safe point), and the curves. fervgg.train puts them
together. Imports Keras: import it after the settings and data checks.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from fervgg import config
from fervgg.common import FervggError, atomic_save_keras
from fervgg.resume import Clock, ResumeState



# ---------------------------------------------------------------- data

@dataclass
class Augmentation:
    """Random changes applied to training batches only (pixels 0-255)."""
    flip: bool = True
    rotation_deg: float = config.AUG_ROTATION_DEG
    zoom: float = config.AUG_ZOOM
    shift: float = config.AUG_SHIFT
    erasing: float = config.AUG_ERASING
    crop: int = config.CROP_SIZE  # random crop side (0: none), see random_crops
    mixup: float = config.AUG_MIXUP  # mixup's alpha (0: none), see mix_batch; after the others

    def layers(self, seed: int):
        """A function (images, training=True) -> augmented images (geometry, random crop,
        erasing, in that order), or None when nothing is on."""
        from keras import layers

        # float32 whatever the global policy: pixels 0-255 need it, and Keras' RandomErasing
        # fails under mixed_float16 (its range op has no float16 kernel).
        f32 = {"dtype": "float32"}
        geometry = []
        if self.flip:
            geometry.append(layers.RandomFlip("horizontal", seed=seed, **f32))
        if self.rotation_deg > 0:
            geometry.append(layers.RandomRotation(self.rotation_deg / 360.0, fill_mode="reflect", seed=seed, **f32))
        if self.zoom > 0:
            geometry.append(layers.RandomZoom(self.zoom, fill_mode="reflect", seed=seed, **f32))
        if self.shift > 0:
            geometry.append(layers.RandomTranslation(self.shift, self.shift, fill_mode="reflect", seed=seed, **f32))
        erase = layers.RandomErasing(factor=self.erasing, scale=(0.02, 0.15), value_range=(0, 255),
                                     seed=seed, **f32) if self.erasing > 0 else None
        if not geometry and not self.crop and erase is None:
            return None
        geometry = keras.Sequential(geometry, name="augment") if geometry else None

        def augment(images, training=True):
            if geometry is not None:
                images = geometry(images, training=training)
            if self.crop:
                images = random_crops(images, self.crop, seed)
            if erase is not None:
                images = erase(images, training=training)
            return images

        return augment


def random_crops(images, crop: int, seed: int):
    """A random crop x crop window of each image of a (B, S, S, C) batch, put back at the
    centre of an S x S zero canvas: the model's CenterCrop layer then reads exactly that
    window, so training sees random crops while the saved model takes whole images."""
    import tensorflow as tf

    size = images.shape[1]
    batch = tf.shape(images)[0]
    starts = tf.random.uniform((batch, 2), 0, size - crop + 1, dtype=tf.int32, seed=seed)
    window = tf.range(crop)
    rows = starts[:, :1] + window  # (B, crop)
    cols = starts[:, 1:] + window
    out = tf.gather(images, rows, axis=1, batch_dims=1)
    out = tf.gather(out, cols, axis=2, batch_dims=1)
    before = (size - crop) // 2  # where keras.layers.CenterCrop starts
    after = size - crop - before
    return tf.pad(out, [[0, 0], [before, after], [before, after], [0, 0]])


def mix_batch(images, labels, alpha: float, seed: int):
    """Mixup (Zhang et al. 2018): the batch mixed with itself in a random order, images and
    one-hot labels alike, by one weight w ~ Beta(alpha, alpha): w * a + (1 - w) * b."""
    import tensorflow as tf

    # Beta(a, a) as X / (X + Y) with X, Y ~ Gamma(a): tf.random has no beta sampler.
    x, y = tf.random.gamma((), alpha, seed=seed), tf.random.gamma((), alpha, seed=None if seed is None else seed + 1)
    w = tf.math.divide_no_nan(x, x + y)  # both draws can underflow to 0 for a tiny alpha
    order = tf.random.shuffle(tf.range(tf.shape(images)[0]), seed=seed)
    mixed_images = w * images + (1 - w) * tf.gather(images, order)
    mixed_labels = w * labels + (1 - w) * tf.gather(labels, order)
    return mixed_images, mixed_labels


def soft_targets(y: np.ndarray, n_classes: int, teacher: np.ndarray | None = None, weight: float = 0.0,
                 temperature: float = 1.0) -> np.ndarray:
    """(N, C) training targets: one-hot labels, or for distillation weight * the teacher's
    probabilities + (1 - weight) * one-hot. The teacher is softened as softmax(log p / temperature):
    on its own training images it is nearly one-hot, and a temperature above 1 brings out which
    wrong classes it finds close (Hinton et al. 2015)."""
    onehot = np.eye(n_classes, dtype=np.float32)[y]
    if teacher is None:
        return onehot
    teacher = np.asarray(teacher, np.float64)
    if teacher.shape != onehot.shape or not np.isfinite(teacher).all() or (teacher < 0).any() \
            or not (teacher.sum(1) > 0).all():
        raise FervggError(f"a teacher must be non-negative finite probabilities of shape {onehot.shape}, "
                          f"not {teacher.shape}")
    if not 0 <= weight <= 1 or not temperature > 0:
        raise FervggError(f"teacher weight {weight} must be in [0, 1] and temperature {temperature} above 0")
    soft = np.power(teacher / teacher.sum(1, keepdims=True), 1.0 / temperature)
    soft /= soft.sum(1, keepdims=True)
    return (weight * soft + (1 - weight) * onehot).astype(np.float32)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over samples); classes absent from y get 0."""
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, seed: int,
                 augmentation: Augmentation | None = None, shuffle: bool = False, replicas: int = 1):
    """tf.data pipeline: uint8 arrays -> (shuffled) float batches with one-hot labels (or y's
    own (N, C) targets, see soft_targets), augmented when an Augmentation is given.

    With several replicas every batch must split evenly (Keras 3 fails on an uneven last
    batch under MirroredStrategy, keras-team/keras#19246), so the image count is cut to a
    multiple of the replica count: at most replicas-1 images (a different few each epoch).
    """
    import tensorflow as tf

    targets = np.asarray(y, np.float32) if np.ndim(y) == 2 else tf.one_hot(y, n_classes)
    ds = tf.data.Dataset.from_tensor_slices((x, targets))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if replicas > 1:
        ds = ds.take(len(x) - len(x) % replicas)
    ds = ds.batch(batch_size)
    aug = augmentation.layers(seed) if augmentation is not None else None
    mixup = augmentation.mixup if augmentation is not None else 0.0

    def to_float(images, labels):
        images = tf.cast(images, tf.float32)
        if aug is not None:
            images = aug(images, training=True)
        if mixup > 0:
            images, labels = mix_batch(images, labels, mixup, seed)
        return images, labels

    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- optimizer and loss

def make_optimizer(name: str, lr: float, weight_decay: float = 0.0):
    decay = weight_decay or None
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=decay)
    return keras.optimizers.Adam(learning_rate=lr, weight_decay=decay)


def compile_model(model, optimizer: str, lr: float, weight_decay: float = 0.0, label_smoothing: float = 0.0):
    # One-hot labels (see make_dataset) so label smoothing is a built-in loss option.
    model.compile(optimizer=make_optimizer(optimizer, lr, weight_decay),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                  metrics=["accuracy"])


def cosine_lr(base_lr: float, progress: float, floor: float = 0.01) -> float:
    """Cosine from base_lr (progress 0) down to floor * base_lr (progress >= 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------- callbacks

class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever validation accuracy improves (atomically), never from an
    epoch whose losses are not finite. Before a new run's first save, the previous run's
    models (`replaces`) move to models/previous/: a failed or worse new run never costs
    the user a good model, and a stale phase-2 model is never picked instead of the new one."""

    def __init__(self, model_path: Path, best: float = -1.0, best_epoch: int | None = None,
                 replaces: list[Path] | None = None):
        super().__init__()
        self.model_path, self.best, self.best_epoch = model_path, best, best_epoch
        self.replaces = replaces or []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        acc = logs.get("val_accuracy")
        finite = all(math.isfinite(float(logs.get(k, 0.0))) for k in ("loss", "val_loss"))
        if acc is not None and finite and acc > self.best:
            print(f"\nepoch {epoch + 1}: val_accuracy improved to {acc:.4f}, saving {self.model_path}")
            self.best, self.best_epoch = float(acc), epoch + 1
            if self.replaces:
                move_aside(self.replaces, self.model_path.parent / config.PREVIOUS_MODELS_DIR)
                self.replaces = []
            atomic_save_keras(self.model, self.model_path)


def previous_models(models_dir: Path) -> list[Path]:
    """The files of an earlier run's models (.keras, .json sidecar, .tflite export)."""
    stems = (Path(config.BEST_MODEL).stem, Path(config.FINE_TUNED_MODEL).stem)
    return sorted(f for stem in stems for f in models_dir.glob(f"{stem}.*") if f.is_file())


def move_aside(files: list[Path], folder: Path) -> None:
    """Move `files` into `folder`, replacing what an older run left there (one generation)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in previous_models(folder):
        old.unlink()
    for f in files:
        if f.exists():
            f.replace(folder / f.name)
    print(f"the previous run's models were moved to {folder}")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first batch whose loss is NaN or infinite, before that epoch can be
    checkpointed or saved as a resume point."""

    def __init__(self, lr: float):
        super().__init__()
        self.lr = lr

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise FervggError(f"training diverged: the loss became {loss} in epoch {self.epoch + 1}, batch "
                              f"{batch + 1}; nothing from this epoch was saved. Lower `lr` (it was {self.lr:g}) "
                              "and add `fresh` to start over")


def trim_csv_log(path: Path, epochs_done: int) -> None:
    """Keep only the rows of epochs already saved: an epoch logged but killed before its
    resume point was saved is trained again, and must not appear twice."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and r[0].isdigit() and int(r[0]) < epochs_done]
    if len(kept) != len(body):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *kept] if kept else [])


class _RestoresCounters:
    """Mixin for Keras's patience-based callbacks: counters restored from a resume point."""

    saved_keys = ("wait", "best")

    def __init__(self, saved: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.saved = saved or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.saved_keys:
            if key in self.saved:
                setattr(self, key, self.saved[key])

    def counters(self) -> dict:
        return {key: float(getattr(self, key)) if key == "best" else getattr(self, key) for key in self.saved_keys}


class ResumableEarlyStopping(_RestoresCounters, keras.callbacks.EarlyStopping):
    pass


class ResumableReduceLR(_RestoresCounters, keras.callbacks.ReduceLROnPlateau):
    saved_keys = ("wait", "best", "cooldown_counter")


class TimeBudget(keras.callbacks.Callback):
    """Stops before an epoch that would overrun the budget (or mid-epoch past it)."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.clock.spent():
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.clock.budget_s is None:
            return
        elapsed = self.clock.elapsed()
        if elapsed + (time.time() - self.epoch_start) > self.clock.budget_s:
            print(f"\ntime budget: {elapsed / 60:.1f} of {self.clock.budget_s / 60:.1f} min used; "
                  "another epoch would not fit, stopping (best checkpoint kept)")
            self.model.stop_training = True


class WarmupCosineSchedule(keras.callbacks.Callback):
    """Per-batch cosine decay of the learning rate after an optional linear warm-up;
    progress is wall time over the budget when there is one, else epochs over `epochs`."""

    def __init__(self, base_lr: float, epochs: int, clock: Clock, warmup_epochs: float = 0.0):
        super().__init__()
        self.base_lr, self.epochs, self.clock, self.warmup_epochs = base_lr, epochs, clock, warmup_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") or 1
        epochs_done = self.epoch + batch / steps
        if self.clock.budget_s is not None:
            progress = self.clock.elapsed() / self.clock.budget_s
        else:
            progress = epochs_done / self.epochs
        lr = cosine_lr(self.base_lr, progress)
        if epochs_done < self.warmup_epochs:
            lr *= 0.01 + 0.99 * epochs_done / self.warmup_epochs
        self.model.optimizer.learning_rate = lr

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # logged like ReduceLROnPlateau does, for the CSV and TensorBoard
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class SaveResumePoint(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer and the callbacks' counters. Goes
    after the other callbacks, so it records their state after this epoch."""

    def __init__(self, resume: ResumeState, state: dict, phase: int, clock: Clock, best: BestCheckpoint,
                 stopping: ResumableEarlyStopping, reduce_lr: ResumableReduceLR | None):
        super().__init__()
        self.resume, self.state, self.phase, self.clock = resume, state, phase, clock
        self.best, self.stopping, self.reduce_lr = best, stopping, reduce_lr

    def on_epoch_end(self, epoch, logs=None):
        counters = {"best_val_accuracy": self.best.best, "best_epoch": self.best.best_epoch,
                    "early_stopping": self.stopping.counters()}
        if self.reduce_lr is not None:
            counters["reduce_lr"] = self.reduce_lr.counters()
        self.state.update(phase=self.phase, epoch=epoch + 1, elapsed_seconds=self.clock.elapsed(),
                          callbacks=counters)
        self.resume.save(self.model, self.state)


class RaiseWhenRequested(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the next batch or epoch end once `requested` is non-empty."""

    def __init__(self, requested: list):
        super().__init__()
        self.requested = requested

    def _check(self, *_, **__):
        if self.requested:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check


@contextlib.contextmanager
def deferred_interrupts():
    """Ctrl+C / SIGTERM during fit() take effect at the next batch end, a second one at once.

    A KeyboardInterrupt raised while tf.data fetches a batch is swallowed by Keras as "input
    ran out of data" and training goes on (seen in a test run), so the signal only sets a flag
    here and a callback raises the interrupt from Python at a safe point. It goes last in the
    callback list, so an epoch that has just ended is saved for resuming first.
    """
    requested = []

    def on_signal(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        print("\ninterrupt received: stopping after this batch (again to stop at once)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield RaiseWhenRequested(requested)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if requested:  # arrived after the last batch: still an interruption
        raise KeyboardInterrupt


def phase_callbacks(phase: int, model_path: Path, log_dir: Path, resume: ResumeState, state: dict,
                    clock: Clock, schedule: str, base_lr: float, epochs: int, patience: int, lr_patience: int,
                    warmup_epochs: float) -> tuple[BestCheckpoint, list]:
    """The callbacks of one phase, their counters restored when resuming that phase."""
    saved = state.get("callbacks", {}) if state.get("phase") == phase else {}
    epochs_done = state.get("epoch", 0) if state.get("phase") == phase else 0
    replaces = previous_models(model_path.parent) if phase == 1 and saved.get("best_epoch") is None else []
    best = BestCheckpoint(model_path, saved.get("best_val_accuracy", -1.0), saved.get("best_epoch"), replaces)
    stopping = ResumableEarlyStopping(saved.get("early_stopping"), monitor="val_accuracy", patience=patience,
                                      mode="max", verbose=1)
    if schedule == "cosine":
        reduce_lr, lr_callback = None, WarmupCosineSchedule(base_lr, epochs, clock, warmup_epochs)
    else:
        reduce_lr = ResumableReduceLR(saved.get("reduce_lr"), monitor="val_loss", factor=config.REDUCE_LR_FACTOR,
                                      patience=lr_patience, min_lr=1e-7, verbose=1)
        lr_callback = reduce_lr
    log_dir.mkdir(parents=True, exist_ok=True)
    trim_csv_log(log_dir / f"phase{phase}.csv", epochs_done)
    return best, [
        StopOnNonFiniteLoss(base_lr), best, stopping, lr_callback, TimeBudget(clock),
        keras.callbacks.CSVLogger(str(log_dir / f"phase{phase}.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(log_dir / f"phase{phase}"), update_freq="epoch"),
        SaveResumePoint(resume, state, phase, clock, best, stopping, reduce_lr),
    ]


# ---------------------------------------------------------------- curves

def plot_curves(run_dir: Path) -> Path | None:
    """training_curves.png from the phases' CSV logs (accuracy and loss, train and val)."""
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

