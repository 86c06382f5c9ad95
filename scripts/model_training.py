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
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cli import HelpFormatter, number, run_cli
from fervgg import config
from fervgg.artifacts import Split, load_split, read_meta
from fervgg.common import cpu_description, DISK_ERRORS, FervggError, import_tensorflow, onednn_enabled
from fervgg.resume import Clock, ResumeState, settings_fingerprint


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
    m.add_argument("--initial-model", type=Path, default=None, metavar="KERAS",
                   help="with --weights none: start from every weight of this model of ours (same classes "
                   "and layout; 'fer2013' = the shipped model) and train all layers in one phase, e.g. a "
                   "new learning-rate cycle")
    m.add_argument("--dense-units", type=number(int, 1), default=config.DENSE_UNITS,
                   help="units of the head's hidden layer")
    m.add_argument("--dropout", type=number(float, 0, below=1), default=config.DROPOUT,
                   help="dropout before the output layer")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=number(int, 1), default=config.EPOCHS,
                   help="epochs of phase 1 (the only phase from scratch)")
    t.add_argument("--fine-tune-epochs", type=number(int, 0), default=config.FINE_TUNE_EPOCHS,
                   help="epochs of phase 2 (pretrained only; 0 skips it)")
    t.add_argument("--batch-size", type=number(int, 1), default=config.BATCH_SIZE, help="global batch size")
    t.add_argument("--lr", type=number(float, above=0, high=10), default=config.LEARNING_RATE,
                   help="learning rate of phase 1")
    t.add_argument("--fine-tune-lr", type=number(float, above=0, high=10), default=config.FINE_TUNE_LEARNING_RATE,
                   help="learning rate of phase 2")
    t.add_argument("--fine-tune-blocks", type=int, default=config.FINE_TUNE_BLOCKS, choices=range(1, 6),
                   help="VGG16 blocks unfrozen in phase 2, counted from the top")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default=config.OPTIMIZER,
                   help="adam, or sgd with Nesterov momentum 0.9")
    t.add_argument("--weight-decay", type=number(float, 0, below=1), default=config.WEIGHT_DECAY,
                   help="decoupled weight decay of the optimizer (Keras applies lr * decay * weight "
                   "per step; 0: none)")
    t.add_argument("--warmup-epochs", type=number(float, 0), default=config.WARMUP_EPOCHS,
                   help="cosine schedule only: raise the learning rate linearly from 1%% of --lr over "
                   "this many epochs first (steadier start with SGD)")
    t.add_argument("--label-smoothing", type=number(float, 0, below=1), default=config.LABEL_SMOOTHING)
    t.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight the loss by inverse class frequency")
    t.add_argument("--patience", type=number(int, 1), default=config.EARLY_STOPPING_PATIENCE,
                   help="early stopping: epochs without val accuracy gain")
    t.add_argument("--lr-patience", type=number(int, 1), default=config.REDUCE_LR_PATIENCE,
                   help="epochs without val loss gain before the learning rate is halved")
    t.add_argument("--lr-schedule", choices=("plateau", "cosine"), default=config.LR_SCHEDULE,
                   help="plateau: halve the learning rate when val loss stalls (--lr-patience); cosine: "
                   "decay it every batch from --lr to 1%% of it over --epochs, or over --time-budget "
                   "when one is given (so the decay ends when the budget does)")
    t.add_argument("--time-budget", type=number(float, above=0), default=None, metavar="MINUTES",
                   help="stop cleanly when the next epoch would not finish within this many minutes "
                   "of training (all phases, resumes included)")
    t.add_argument("--steps-per-epoch", type=number(int, 1), default=None,
                   help="cap batches per epoch (quick smoke runs)")
    t.add_argument("--seed", type=number(int, 0), default=config.SEED)
    t.add_argument("--fresh", action="store_true", help="ignore saved resume state and start over")
    a = p.add_argument_group("augmentation (training batches only)")
    a.add_argument("--no-augment", dest="augment", action="store_false", help="turn all augmentation off")
    a.add_argument("--no-flip", dest="aug_flip", action="store_false", help="no horizontal flips")
    a.add_argument("--aug-rotation", type=number(float, 0, 180), default=config.AUG_ROTATION_DEG,
                   help="max rotation, degrees")
    a.add_argument("--aug-zoom", type=number(float, 0, below=1), default=config.AUG_ZOOM,
                   help="max zoom in/out, fraction")
    a.add_argument("--aug-shift", type=number(float, 0, below=1), default=config.AUG_SHIFT,
                   help="max shift, fraction of the side")
    a.add_argument("--crop-size", type=number(int, 0), default=config.CROP_SIZE, metavar="PIXELS",
                   help="train on random PIXELS x PIXELS crops of each image; the saved model still takes "
                   "the whole image and reads its centre crop, and ten-crop TTA uses this size "
                   "(0: no cropping; e.g. 40 for 48x48 FER2013)")
    a.add_argument("--aug-erasing", type=number(float, 0, 1), default=config.AUG_ERASING,
                   help="probability of erasing a random rectangle")
    h = p.add_argument_group("hardware")
    h.add_argument("--precision", choices=("auto", "mixed_bfloat16", "mixed_float16", "float32"),
                   default=config.PRECISION, help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with "
                   "bfloat16 instructions, else float32")
    h.add_argument("--distribute", choices=("auto", "none", "mirrored", "multi-worker"), default="auto",
                   help="auto: MirroredStrategy over all GPUs when there are several, "
                   "MultiWorkerMirroredStrategy when TF_CONFIG is set")
    h.add_argument("--logical-cpus", type=number(int, 0, 64), default=0,
                   help="split the CPU into N logical devices and mirror over them (tests the "
                   "distributed path without GPUs)")
    args = p.parse_args(argv)
    if args.weights.lower() in ("none", "imagenet", "fer2013"):
        args.weights = args.weights.lower()
    if args.initial_model is not None:
        if args.weights != "none":
            p.error("--initial-model needs --weights none (it replaces the starting weights)")
        if str(args.initial_model) == "fer2013":
            args.initial_model = Path(config.PRETRAINED_MODEL)
    return args


# ---------------------------------------------------------------- hardware

# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below its bfloat16 kernels: bf16 would be emulated.
ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bf16() -> bool:
    """bfloat16 instructions that oneDNN may use (not capped by ONEDNN_MAX_CPU_ISA)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ISA_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_hardware(args):
    """Precision policy and distribution strategy; returns (strategy, description)."""
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
    return strategy, desc


# ---------------------------------------------------------------- the run

@dataclass
class TrainingRun:
    """Everything one training run works from, in one record."""
    args: argparse.Namespace  # the effective settings
    meta: dict  # the data's meta.json
    train: Split
    val: Split
    state: dict  # resume state: fingerprint, run name, phase, epoch, callbacks' counters
    resume: ResumeState
    clock: Clock
    strategy: object
    hardware: str

    @property
    def run_dir(self) -> Path:
        return self.args.logs_dir / self.state["run_name"]

    @property
    def pretrained(self) -> bool:
        return self.args.weights != "none"

    def phases(self) -> tuple[int, ...]:
        return (1, 2) if self.pretrained and self.args.fine_tune_epochs > 0 else (1,)


def start_or_resume(args, meta: dict) -> tuple[ResumeState, dict | None, str]:
    """The resume state to continue (None: a new run) and the settings' fingerprint."""
    resume = ResumeState(args.models_dir)
    fingerprint = settings_fingerprint(args, meta)
    if args.fresh:
        resume.clear()
        return resume, None, fingerprint
    state = resume.load()
    if state and state.get("fingerprint") != fingerprint:
        raise FervggError(f"{resume.dir} holds an interrupted run with other settings or data; re-run "
                        "with the same flags to resume it, or add --fresh to start over")
    return resume, state, fingerprint


def new_state(args, fingerprint: str) -> dict:
    if not args.fresh:
        print("no interrupted run found: starting a new run")
    # The previous run's models stay until this run saves its first checkpoint; they then
    # move to models/previous/ (training.BestCheckpoint).
    run_name = args.run_name or datetime.now().strftime("run-%Y%m%d-%H%M%S")
    return {"fingerprint": fingerprint, "run_name": run_name, "phase": 1, "epoch": 0,
            "elapsed_seconds": 0.0, "phases_done": []}


def build_or_load(run: TrainingRun, phase: int, epochs: int) -> tuple[object, int]:
    """The phase's model, compiled, and the epoch it starts at (a resume point's, or 0)."""
    import keras

    from fervgg.emotion_model import build_model, load_model, set_backbone_trainable
    from fervgg.training import compile_model

    args, state = run.args, run.state
    if state.get("phase") == phase and state.get("model_file"):
        model = run.resume.load_model(state)
        print(f"resuming phase {phase} at epoch {state['epoch'] + 1} of {epochs} "
              f"(optimizer state restored from {run.resume.dir / state['model_file']})")
        return model, state["epoch"]
    if phase == 1:
        keras.utils.set_random_seed(args.seed)
        model = build_model(len(run.meta["class_names"]), run.meta["image_size"], args.weights,
                            args.dense_units, args.dropout, args.crop_size)
        if args.initial_model is not None:
            copy_weights(load_model(args.initial_model), model, args.initial_model)
        if run.pretrained:
            set_backbone_trainable(model, 0)
    else:
        model = load_model(args.models_dir / config.BEST_MODEL, float32=False)
        set_backbone_trainable(model, args.fine_tune_blocks)
    lr = args.fine_tune_lr if phase == 2 else args.lr
    compile_model(model, args.optimizer, lr, args.weight_decay, args.label_smoothing)
    return model, 0


def copy_weights(source, model, path: Path) -> None:
    """Every weight of `source` into `model` (same layout; a crop layer has no weights)."""
    import numpy as np

    theirs, ours = source.get_weights(), model.weights
    if len(theirs) != len(ours) or any(tuple(w.shape) != tuple(v.shape) for w, v in zip(theirs, ours)):
        raise FervggError(f"--initial-model {path} has another layout than this run's model (classes, "
                        "--dense-units, backbone): it cannot be continued")
    model.set_weights([np.asarray(w).astype(v.dtype) for w, v in zip(theirs, ours)])
    print(f"starting from every weight of {path}")


def run_phase(run: TrainingRun, phase: int) -> tuple[Path, float, int | None]:
    """Train one phase to its best checkpoint; returns (model path, best val acc, best epoch)."""
    from fervgg.training import Augmentation, class_weights, deferred_interrupts, make_dataset, phase_callbacks

    args = run.args
    model_path = args.models_dir / (config.FINE_TUNED_MODEL if phase == 2 else config.BEST_MODEL)
    epochs = args.fine_tune_epochs if phase == 2 else args.epochs
    lr = args.fine_tune_lr if phase == 2 else args.lr
    with run.strategy.scope():
        model, initial_epoch = build_or_load(run, phase, epochs)
    if initial_epoch >= epochs:
        print(f"phase {phase}: {initial_epoch} epochs already done")
        saved = run.state["callbacks"]
        return model_path, saved["best_val_accuracy"], saved["best_epoch"]

    what = ("head on a frozen VGG16" if run.pretrained and phase == 1 else
            f"top {args.fine_tune_blocks} VGG16 blocks + head" if phase == 2 else "VGG16-BN from scratch")
    print(f"\nphase {phase}: training {what}, lr {lr:g}, up to {epochs} epochs -> {model_path}")
    seed = args.seed + phase
    n_classes = len(run.meta["class_names"])
    replicas = run.strategy.num_replicas_in_sync
    augmentation = Augmentation(args.aug_flip, args.aug_rotation, args.aug_zoom, args.aug_shift,
                                args.aug_erasing, args.crop_size) if args.augment else None
    train_ds = make_dataset(run.train.x, run.train.y, args.batch_size, n_classes, seed, augmentation,
                            shuffle=True, replicas=replicas)
    val_ds = make_dataset(run.val.x, run.val.y, args.batch_size, n_classes, seed, replicas=replicas)
    best, callbacks = phase_callbacks(phase, model_path, run.run_dir, run.resume, run.state, run.clock,
                                      args.lr_schedule, lr, epochs, args.patience, args.lr_patience,
                                      args.warmup_epochs)
    weights = class_weights(run.train.y, n_classes) if args.class_weights else None
    with deferred_interrupts() as interrupt_check:
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                  class_weight=weights, callbacks=[*callbacks, interrupt_check],
                  steps_per_epoch=args.steps_per_epoch, shuffle=False,
                  verbose=2 if not sys.stdout.isatty() else 1)
    return model_path, best.best, best.best_epoch


def train_phases(run: TrainingRun) -> dict[int, tuple[Path, float, int]]:
    """Each phase not done yet, its sidecar written when it ends; {phase: (path, acc, epoch)}."""
    from fervgg.emotion_model import write_sidecar

    results = {}
    for phase in run.phases():
        if phase in run.state.get("phases_done", []):
            continue
        if run.clock.spent():
            print(f"time budget spent: skipping phase {phase}")
            break
        model_path, best_acc, best_epoch = run_phase(run, phase)
        if best_epoch is None:
            raise FervggError(f"phase {phase} ended before any epoch finished; nothing was saved")
        write_sidecar(model_path, run.args, run.meta, run.state["run_name"], phase, best_acc, best_epoch,
                      run.hardware, run.clock.elapsed())
        results[phase] = (model_path, best_acc, best_epoch)
        run.state["phases_done"] = run.state.get("phases_done", []) + [phase]
        run.state.update(phase=phase + 1, epoch=0, callbacks={}, model_file=None,
                         elapsed_seconds=run.clock.elapsed())
        run.resume.save(None, run.state)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = read_meta(args.data_dir)
    train = load_split(args.data_dir, "train", meta)
    val = load_split(args.data_dir, "val", meta)
    if args.crop_size and not 32 <= args.crop_size < meta["image_size"]:
        raise FervggError(f"--crop-size {args.crop_size} must be at least 32 and below the image size "
                        f"{meta['image_size']} (or 0 for no cropping)")
    if len(train.y) == 0 or len(val.y) == 0:
        raise FervggError(f"need training and validation images; got {len(train.y)} and {len(val.y)} "
                        "(re-run data_processing.py with a non-zero --val-fraction)")
    resume, state, fingerprint = start_or_resume(args, meta)
    print(f"data: {len(train.y)} train / {len(val.y)} val images, {meta['image_size']}x{meta['image_size']}, "
          f"classes {meta['class_names']}")

    import_tensorflow()  # after argument checks: --help and errors stay fast

    strategy, hardware = setup_hardware(args)
    print(f"hardware: {hardware}")
    if args.batch_size % strategy.num_replicas_in_sync:
        raise FervggError(f"--batch-size {args.batch_size} must be a multiple of the "
                        f"{strategy.num_replicas_in_sync} replicas")
    if state is None:
        state = new_state(args, fingerprint)
    else:
        print(f"resuming run {state['run_name']} ({state['elapsed_seconds'] / 60:.1f} min trained so far)")
    clock = Clock(time.time() - state.get("elapsed_seconds", 0.0),
                  args.time_budget * 60 if args.time_budget else None)
    run = TrainingRun(args, meta, train, val, state, resume, clock, strategy, hardware)
    try:
        results = train_phases(run)
    except KeyboardInterrupt:
        print(f"\ninterrupted: phase {state.get('phase', 1)}, {state.get('epoch', 0)} epoch(s) saved. Re-run "
              "the same command to resume (or add --fresh to start over).", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk while saving: the files saved before are whole (atomic writes)
        if exc.errno not in DISK_ERRORS:
            raise
        raise FervggError(f"cannot save {exc.filename or 'a checkpoint'}: {exc.strerror or exc}; "
                        f"{state.get('epoch', 0)} epoch(s) of phase {state.get('phase', 1)} are saved: free "
                        "some space and re-run the same command to resume") from None
    report(run, results)
    return 0


def report(run: TrainingRun, results: dict) -> None:
    from fervgg.training import plot_curves

    run.resume.clear()
    curves = plot_curves(run.run_dir)
    print(f"\ntraining done in {run.clock.elapsed() / 60:.1f} min")
    for phase, (path, acc, epoch) in results.items():
        print(f"  phase {phase}: best val_accuracy {acc:.4f} at epoch {epoch} -> {path}")
    if curves:
        print(f"  curves: {curves}")
    print(f"  TensorBoard: tensorboard --logdir {run.args.logs_dir}")


if __name__ == "__main__":
    run_cli(main)
