"""Fine-tune VGG16 on the preprocessed arrays (or train it from scratch): the command line
of fervgg.train.

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
import sys
from pathlib import Path

from cli import HelpFormatter, number, parse_settings, run_cli
from fervgg import config
from fervgg.hardware import DISTRIBUTE_MODES, PRECISIONS
from fervgg.train import LR_SCHEDULES, OPTIMIZERS, TrainingInterrupted, TrainResult, TrainSettings, train


def parse_args(argv=None) -> TrainSettings:
    R = TrainSettings.RANGES  # the settings' own bounds
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
    m.add_argument("--dense-units", type=number(int, **R["dense_units"]), default=config.DENSE_UNITS,
                   help="units of the head's hidden layer")
    m.add_argument("--dropout", type=number(float, **R["dropout"]), default=config.DROPOUT,
                   help="dropout before the output layer")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=number(int, **R["epochs"]), default=config.EPOCHS,
                   help="epochs of phase 1 (the only phase from scratch)")
    t.add_argument("--fine-tune-epochs", type=number(int, **R["fine_tune_epochs"]), default=config.FINE_TUNE_EPOCHS,
                   help="epochs of phase 2 (pretrained only; 0 skips it)")
    t.add_argument("--batch-size", type=number(int, **R["batch_size"]), default=config.BATCH_SIZE,
                   help="global batch size")
    t.add_argument("--lr", type=number(float, **R["lr"]), default=config.LEARNING_RATE,
                   help="learning rate of phase 1")
    t.add_argument("--fine-tune-lr", type=number(float, **R["fine_tune_lr"]), default=config.FINE_TUNE_LEARNING_RATE,
                   help="learning rate of phase 2")
    t.add_argument("--fine-tune-blocks", type=int, default=config.FINE_TUNE_BLOCKS, choices=range(1, 6),
                   help="VGG16 blocks unfrozen in phase 2, counted from the top")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=config.OPTIMIZER,
                   help="adam, or sgd with Nesterov momentum 0.9")
    t.add_argument("--weight-decay", type=number(float, **R["weight_decay"]), default=config.WEIGHT_DECAY,
                   help="decoupled weight decay of the optimizer (Keras applies lr * decay * weight "
                   "per step; 0: none)")
    t.add_argument("--warmup-epochs", type=number(float, **R["warmup_epochs"]), default=config.WARMUP_EPOCHS,
                   help="cosine schedule only: raise the learning rate linearly from 1%% of --lr over "
                   "this many epochs first (steadier start with SGD)")
    t.add_argument("--label-smoothing", type=number(float, **R["label_smoothing"]), default=config.LABEL_SMOOTHING)
    t.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                   help="do not weight the loss by inverse class frequency")
    t.add_argument("--patience", type=number(int, **R["patience"]), default=config.EARLY_STOPPING_PATIENCE,
                   help="early stopping: epochs without val accuracy gain")
    t.add_argument("--lr-patience", type=number(int, **R["lr_patience"]), default=config.REDUCE_LR_PATIENCE,
                   help="epochs without val loss gain before the learning rate is halved")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=config.LR_SCHEDULE,
                   help="plateau: halve the learning rate when val loss stalls (--lr-patience); cosine: "
                   "decay it every batch from --lr to 1%% of it over --epochs, or over --time-budget "
                   "when one is given (so the decay ends when the budget does)")
    t.add_argument("--time-budget", type=number(float, **R["time_budget"]), default=None, metavar="MINUTES",
                   help="stop cleanly when the next epoch would not finish within this many minutes "
                   "of training (all phases, resumes included)")
    t.add_argument("--steps-per-epoch", type=number(int, **R["steps_per_epoch"]), default=None,
                   help="cap batches per epoch (quick smoke runs)")
    t.add_argument("--seed", type=number(int, **R["seed"]), default=config.SEED)
    t.add_argument("--fresh", action="store_true", help="ignore saved resume state and start over")
    t.add_argument("--keep-epochs", action="store_true",
                   help="keep every epoch's checkpoint (with optimizer state: ~120 MB each for VGG16) in "
                   f"<models-dir>/{config.KEPT_EPOCHS_DIR_NAME}/<run name>/, to average the last ones "
                   "with scripts/average_models.py")
    a = p.add_argument_group("augmentation (training batches only)")
    a.add_argument("--no-augment", dest="augment", action="store_false", help="turn all augmentation off")
    a.add_argument("--no-flip", dest="aug_flip", action="store_false", help="no horizontal flips")
    a.add_argument("--aug-rotation", type=number(float, **R["aug_rotation"]), default=config.AUG_ROTATION_DEG,
                   help="max rotation, degrees")
    a.add_argument("--aug-zoom", type=number(float, **R["aug_zoom"]), default=config.AUG_ZOOM,
                   help="max zoom in/out, fraction")
    a.add_argument("--aug-shift", type=number(float, **R["aug_shift"]), default=config.AUG_SHIFT,
                   help="max shift, fraction of the side")
    a.add_argument("--crop-size", type=number(int, **R["crop_size"]), default=None, metavar="PIXELS",
                   help="train on random PIXELS x PIXELS crops of each image; the saved model still takes "
                   "the whole image and reads its centre crop, and ten-crop TTA uses this size "
                   "(0: no cropping; e.g. 40 for 48x48 FER2013). Default: the starting model's when --weights "
                   f"is a model of ours (fer2013, a .keras) or --initial-model is given, else {config.CROP_SIZE}")
    a.add_argument("--aug-erasing", type=number(float, **R["aug_erasing"]), default=config.AUG_ERASING,
                   help="probability of erasing a random rectangle")
    a.add_argument("--aug-mixup", type=number(float, **R["aug_mixup"]), default=config.AUG_MIXUP, metavar="ALPHA",
                   help="mixup: each training batch is mixed with itself in another order, images and labels, "
                   "by one weight drawn from Beta(ALPHA, ALPHA) per batch (0: off; 0.2-1 are usual)")
    d = p.add_argument_group("distillation (learning from a teacher's probabilities)")
    d.add_argument("--teacher", type=Path, nargs="+", default=None, metavar="PROBS.npy",
                   help="float (N, classes) .npy files of a teacher's probabilities for every training image, in "
                   "X_train.npy's order (evaluate_model.py --split train writes a model's probabilities.npy); "
                   "several are averaged (an ensemble); each target becomes --teacher-weight x the teacher + "
                   "the rest x the label")
    d.add_argument("--teacher-weight", type=number(float, **R["teacher_weight"]), default=config.TEACHER_WEIGHT,
                   help="the teacher's share of each target")
    d.add_argument("--teacher-temperature", type=number(float, **R["teacher_temperature"]),
                   default=config.TEACHER_TEMPERATURE,
                   help="softens the teacher as softmax(log p / T): above 1 brings out the classes it finds close")
    h = p.add_argument_group("hardware")
    h.add_argument("--precision", choices=PRECISIONS,
                   default=config.PRECISION, help="auto: mixed_float16 on GPU, mixed_bfloat16 on CPUs with "
                   "bfloat16 instructions, else float32")
    h.add_argument("--distribute", choices=DISTRIBUTE_MODES, default="auto",
                   help="auto: MirroredStrategy over all GPUs when there are several, "
                   "MultiWorkerMirroredStrategy when TF_CONFIG is set")
    h.add_argument("--logical-cpus", type=number(int, **R["logical_cpus"]), default=0,
                   help="split the CPU into N logical devices and mirror over them (tests the "
                   "distributed path without GPUs)")
    return parse_settings(p, argv, TrainSettings)


def main(argv=None) -> int:
    settings = parse_args(argv)
    try:
        result = train(settings)
    except TrainingInterrupted as stop:
        print(f"\ninterrupted: phase {stop.phase}, {stop.epoch} epoch(s) saved. Re-run the same command to "
              "resume (or add --fresh to start over).", file=sys.stderr)
        return 130
    report(result, settings.logs_dir)
    return 0


def report(result: TrainResult, logs_dir: Path) -> None:
    print(f"\ntraining done in {result.training_seconds / 60:.1f} min")
    for phase, r in result.phases.items():
        print(f"  phase {phase}: best val_accuracy {r.best_val_accuracy:.4f} at epoch {r.best_epoch} -> {r.model_path}")
    if result.curves:
        print(f"  curves: {result.curves}")
    print(f"  TensorBoard: tensorboard --logdir {logs_dir}")


if __name__ == "__main__":
    run_cli(main)
