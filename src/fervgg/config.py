"""Every path and default of the pipeline, in one place.

Scripts take overrides as command-line flags whose defaults come from here, and
write the effective settings as JSON next to what they produce.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# --- Paths ---
# In a clone (the package installed editable from src/), the folders are the repository's,
# whatever the current directory is; an installed package uses the current directory.
_CHECKOUT: Path = Path(__file__).resolve().parents[2]
ROOT: Path = _CHECKOUT if (_CHECKOUT / "scripts" / "model_training.py").is_file() else Path.cwd()
DATA_DIR: Path = ROOT / "data"
PREPROCESSED_DIR: Path = ROOT / "preprocessed_data"
MODELS_DIR: Path = ROOT / "models"
LOGS_DIR: Path = ROOT / "logs"
DEMO_DATA_DIR: Path = ROOT / "demo" / "data"
DEMO_TRAIN_PER_CLASS: int = 60  # make_demo_data.py (make demo asks for 120)
DEMO_TEST_PER_CLASS: int = 15

# --- Classes and images ---
# FER2013's seven emotions, in the alphabetical folder order of the Kaggle release.
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
IMAGE_SIZE: int = 48  # FER2013 crops are 48x48 grayscale
SEED: int = 1337

# --- Preprocessing ---
VAL_FRACTION: float = 0.1
TEST_FRACTION: float = 0.1  # only used when the dataset has no test/ folder
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
)
# Untrusted images: refuse anything larger before decoding (decompression bombs).
MAX_IMAGE_PIXELS: int = 50_000_000
MAX_FILE_BYTES: int = 100 * 1024 * 1024
NEAR_BLANK_STD: float = 2.0  # pixel standard deviation below which an image is "near blank"
META_FILE: str = "meta.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")

# --- Model files ---
BEST_MODEL: str = "best_model.keras"  # phase 1 (or the only phase when training from scratch)
FINE_TUNED_MODEL: str = "fine_tuned_model.keras"  # phase 2
TFLITE_SUFFIX: str = ".tflite"
INT8_SUFFIX: str = ".int8.tflite"  # export_model.py --int8-data: the quantised model, preferred when present
PREVIOUS_MODELS_DIR: str = "previous"  # a new run moves the last run's models here
RESUME_DIR_NAME: str = ".resume"  # per-run resume state, inside MODELS_DIR
KEPT_EPOCHS_DIR_NAME: str = "epochs"  # <models_dir>/epochs/<run name>/: every epoch, with `keep_epochs`
VGG16_NOTOP_WEIGHTS: str = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# The model that ships with the project (FER2013, 7 classes): used by prediction when you
# have no model of your own, and by --weights fer2013 as a start for fine-tuning.
def _pretrained_dir() -> Path:
    """The package data fervgg.pretrained (models/pretrained/ in a clone, see pyproject.toml)."""
    try:
        return Path(str(files("fervgg.pretrained")))
    except ModuleNotFoundError:  # the source tree on PYTHONPATH, not installed
        return MODELS_DIR / "pretrained"


PRETRAINED_DIR: Path = _pretrained_dir()
PRETRAINED_MODEL: Path = PRETRAINED_DIR / "fer2013_vgg16.keras"

# --- Training ---
WEIGHTS: str = "imagenet"  # "imagenet", "fer2013", "none", a .keras model of ours or a weights file
EPOCHS: int = 30  # phase 1 (or the only phase)
FINE_TUNE_EPOCHS: int = 20  # phase 2, pretrained only
BATCH_SIZE: int = 64
OPTIMIZER: str = "adam"  # or "sgd" (Nesterov momentum 0.9)
PRECISION: str = "auto"  # mixed_float16 on GPU, mixed_bfloat16 on CPUs with bf16 instructions, else float32
LEARNING_RATE: float = 3e-4  # Adam, phase 1 / from scratch; 1e-3 often failed to start VGG16-BN (measured)
FINE_TUNE_LEARNING_RATE: float = 1e-5
FINE_TUNE_BLOCKS: int = 2  # VGG16 blocks unfrozen in phase 2 (block5, block4)
LABEL_SMOOTHING: float = 0.0
WEIGHT_DECAY: float = 0.0  # decoupled, as Keras optimizers apply it (lr * decay * weight per step)
WARMUP_EPOCHS: float = 0.0  # linear warm-up before the cosine decay
EARLY_STOPPING_PATIENCE: int = 6
REDUCE_LR_PATIENCE: int = 3
REDUCE_LR_FACTOR: float = 0.5
LR_SCHEDULE: str = "plateau"  # or "cosine" (see model_training.py --lr-schedule)
DROPOUT: float = 0.0  # 0.5 made from-scratch VGG16-BN learn ~2.5x slower (demo data, measured)
DENSE_UNITS: int = 256
# Random-crop training: each training image is a random CROP_SIZE x CROP_SIZE window of the
# face; the saved model takes the whole image and reads its centre crop (0: no cropping).
# A run that starts from a model of ours (fine-tuning, --initial-model) uses that model's instead.
CROP_SIZE: int = 0

# Augmentation (applied to training batches only, never at evaluation).
AUG_ROTATION_DEG: float = 10.0
AUG_ZOOM: float = 0.1
AUG_SHIFT: float = 0.1
AUG_ERASING: float = 0.25  # probability of erasing one random rectangle per image
AUG_MIXUP: float = 0.0  # mixup's alpha (0: off): each batch mixed with itself shuffled, Beta(alpha, alpha)
# Distillation (model_training.py --teacher): each target is TEACHER_WEIGHT x the teacher's probabilities,
# softened by TEACHER_TEMPERATURE, + the rest x the one-hot label (the GPU runs' defaults).
TEACHER_WEIGHT: float = 0.7
TEACHER_TEMPERATURE: float = 1.0

# --- Evaluation / prediction ---
EVAL_BATCH_SIZE: int = 256
EVAL_DIR_NAME: str = "eval"  # models/eval/<model>-<split>/
MISTAKES_SHOWN: int = 25  # evaluate_model.py --mistakes: the most confident mistakes drawn
EXPORT_CHECK_SAMPLES: int = 8  # export_model.py: random inputs on which LiteRT and Keras must agree...
EXPORT_TOLERANCE: float = 1e-3  # ...to within this absolute difference of probabilities
EXPORT_TOLERANCE_FLOAT16: float = 2e-2  # ...or this, with --float16 weights (rounding to 11 bits)
INT8_SAMPLES: int = 400  # export_model.py --int8-data: training images that calibrate the int8 model
INT8_MAX_LOSS: float = 0.005  # ...which is kept only within this accuracy of the float model (one view and TTA)
# Ten-crop TTA by default on the photo path (predict_emotion.py photos, EmotionRecognizer, the
# service's ?tta): chosen by measured accuracy against cost (BENCHMARKS.md, "Ten-crop"). Video
# (files, cameras, the page's webcam) always uses one view.
PHOTO_TTA: bool = False
TTA_CROP_FRACTION: float = 0.9  # ten-crop TTA: crop side / image side (training zooms in up to 10%)
DETECTOR: str = "retinaface"  # the default face detector (fervgg.faces.DETECTORS)
FACE_MARGIN: float = 0.2  # fraction of the face box added on each side before cropping
DETECT_MAX_SIDE: int = 1024  # photos are downscaled to this longest side for detection
# Video: frames are downscaled further for detection, and faces are detected on every Nth
# analysed frame (and at every cut), tracked in between: see BENCHMARKS.md "Video".
VIDEO_DETECT_SIDE: int = 480
VIDEO_DETECT_EVERY: int = 3
