"""Face detection on photos, for prediction: PIL RGB image -> face boxes.

Boxes are (x, y, w, h) in the original image's pixels. Three detectors:

- "retinaface" (default): RetinaFace MobileNet-0.25 (fervgg.retinaface), a 1.7 MB LiteRT
  model shipped in the package. Finds turned, small and partly hidden faces; does not
  import TensorFlow. On 60 WIDER FACE photos: recall 0.92 on faces >= 40 px at precision
  0.94, in less time than the Haar cascades (BENCHMARKS.md, "Face detection").
- "opencv": OpenCV's bundled Haar cascades, tuned (below). Misses most faces that are
  not frontal (recall 0.35 on the same photos).
- "mtcnn": the `mtcnn` package (a TensorFlow model); importing TensorFlow costs seconds.

How the Haar detector is tuned (on ../shared/photos, see the README's measurements):
the photo is downscaled to config.DETECT_MAX_SIDE and histogram-equalised; the border is
padded (edge pixels repeated) so a face cut off by the image edge still fits the cascade's
window; frontalface_alt proposes faces no smaller than MIN_FACE_FRACTION of the short
side, frontalface_alt2 must confirm each one on its neighbourhood (this removes most
false positives on clothes and furniture), and overlapping boxes are merged.

Loaded detectors are kept by lru_cache functions (_cascade, _mtcnn, retinaface.detector):
nothing is loaded at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from fervgg import config
from fervgg.common import FervggError

DETECTORS = ("retinaface", "opencv", "mtcnn")  # the first is config.DETECTOR

# Haar tuning (detection-scale pixels: after downscaling to config.DETECT_MAX_SIDE).
PROPOSE_CASCADE = "haarcascade_frontalface_alt.xml"
CONFIRM_CASCADE = "haarcascade_frontalface_alt2.xml"
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 3
MIN_FACE_FRACTION = 0.04  # smallest face: this fraction of the image's short side...
MIN_FACE_PIXELS = 24  # ...but never below the cascades' 20-24 px window
EDGE_PAD_FRACTION = 0.15  # border added on each side, fraction of the short side
MERGE_IOU = 0.3  # boxes overlapping more than this (or nested) are one face
MTCNN_MIN_CONFIDENCE = 0.9
# RetinaFace: a face needs this probability, and this larger side in detection-scale pixels
# (smaller faces are too small to read an emotion from, and most false faces are that small);
# measured on ../shared/faces by bench/face_detection.py (BENCHMARKS.md, "Face detection").
RETINAFACE_MIN_SCORE = 0.7
RETINAFACE_MIN_SIDE = 24

Box = tuple[int, int, int, int]


@dataclass
class Detection:
    box: Box  # detection-scale pixels, may reach outside the image before clamping
    score: float


# ------------------------------------------------------------------------------ public

def detect_faces(image: Image.Image, detector: str = config.DETECTOR,
                 max_side: int = config.DETECT_MAX_SIDE, engine=None) -> list[Box]:
    """Faces in an RGB (or L) image, left to right, as (x, y, w, h) in image pixels. `engine`: a
    retinaface.RetinaFace of the caller's own instead of the process's shared one."""
    if detector not in DETECTORS:
        raise FervggError(f"unknown `detector` {detector!r}: choose one of {', '.join(DETECTORS)}")
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                             Image.Resampling.BILINEAR, reducing_gap=2.0)
    else:
        small = image
    found = _detect_retinaface(small, engine) if detector == "retinaface" else _DETECT[detector](small)
    if detector != "retinaface":  # RetinaFace suppresses its own duplicates, and keeps faces in a crowd apart
        found = merge_overlapping(found)
    boxes = []
    for det in found:
        box = clamp_box(tuple(v / scale for v in det.box), width, height)
        if box is not None:
            boxes.append(box)
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def crop_box(box: Box, width: int, height: int, margin: float = config.FACE_MARGIN) -> tuple[int, int, int, int]:
    """A square crop (left, upper, right, lower) around a face box, `margin` of the box
    added on each side, shifted and then clamped to stay inside the image."""
    x, y, w, h = box
    # Near an edge the margin shrinks before the square leaves the image.
    side = max(max(w, h), min(max(w, h) * (1.0 + 2.0 * margin), width, height))
    cx, cy = x + w / 2.0, y + h / 2.0
    left = min(max(cx - side / 2.0, 0.0), max(width - side, 0.0))
    top = min(max(cy - side / 2.0, 0.0), max(height - side, 0.0))
    right, bottom = min(left + side, width), min(top + side, height)
    return round(left), round(top), max(round(right), round(left) + 1), max(round(bottom), round(top) + 1)


def clamp_box(box, width: int, height: int) -> Box | None:
    """(x, y, w, h) floats -> ints inside the image; None if nothing is left."""
    x, y, w, h = box
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def iou(a: Box, b: Box) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _contains_center(outer: Box, inner: Box) -> bool:
    cx, cy = inner[0] + inner[2] / 2, inner[1] + inner[3] / 2
    return outer[0] <= cx <= outer[0] + outer[2] and outer[1] <= cy <= outer[1] + outer[3]


def merge_overlapping(detections: list[Detection], threshold: float = MERGE_IOU) -> list[Detection]:
    """Greedy non-maximum suppression: keep the best-scoring box of each overlapping group
    (boxes whose centres lie inside each other count as overlapping too)."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: (-d.score, -d.box[2] * d.box[3])):
        if all(iou(det.box, k.box) <= threshold and not _contains_center(k.box, det.box)
               and not _contains_center(det.box, k.box) for k in kept):
            kept.append(det)
    return kept


# ------------------------------------------------------------------------------ OpenCV

@lru_cache(maxsize=None)
def _cascade(name: str):
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise FervggError(f"cannot load OpenCV's {name} (opencv-python-headless 4.x ships it: "
                          f"reinstall it, see requirements.txt)")
    return cascade


def _detect_opencv(image: Image.Image) -> list[Detection]:
    import cv2

    gray = np.asarray(image.convert("L"))
    height, width = gray.shape
    short = min(width, height)
    if short < MIN_FACE_PIXELS:
        return []
    gray = cv2.equalizeHist(gray)
    pad = round(EDGE_PAD_FRACTION * short)
    padded = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    min_size = max(MIN_FACE_PIXELS, round(MIN_FACE_FRACTION * short))
    boxes, _, weights = _cascade(PROPOSE_CASCADE).detectMultiScale3(
        padded, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS,
        minSize=(min_size, min_size), outputRejectLevels=True)
    found = []
    for (x, y, w, h), weight in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(weights).ravel()):
        box = (int(x), int(y), int(w), int(h))
        if _confirmed(padded, box):
            found.append(Detection((box[0] - pad, box[1] - pad, box[2], box[3]), float(weight)))
    return found


def _confirmed(padded: np.ndarray, box: Box) -> bool:
    """Does the second cascade also see a face of about this size about here?"""
    x, y, w, h = box
    grow = w // 2
    x0, y0 = max(0, x - grow), max(0, y - grow)
    roi = padded[y0:y + h + grow, x0:x + w + grow]
    lo, hi = max(MIN_FACE_PIXELS - 4, int(w * 0.6)), int(w * 1.6) + 1
    if min(roi.shape) < lo:
        return False
    hits = _cascade(CONFIRM_CASCADE).detectMultiScale(
        roi, scaleFactor=1.05, minNeighbors=2, minSize=(lo, lo), maxSize=(hi, hi))
    return any(iou(box, (int(hx) + x0, int(hy) + y0, int(hw), int(hh))) > 0.3
               for hx, hy, hw, hh in np.asarray(hits).reshape(-1, 4))


# ------------------------------------------------------------------------------ RetinaFace

def _detect_retinaface(image: Image.Image, engine=None) -> list[Detection]:
    from fervgg import retinaface

    pixels = np.asarray(image.convert("RGB"))
    if min(pixels.shape[:2]) < RETINAFACE_MIN_SIDE:
        return []
    engine = engine or retinaface.detector()
    return [Detection(box, score) for box, score in engine.detect(pixels, RETINAFACE_MIN_SCORE, RETINAFACE_MIN_SIDE)]


# ------------------------------------------------------------------------------ MTCNN

@lru_cache(maxsize=1)
def _mtcnn():
    try:
        from mtcnn import MTCNN
    except ImportError as exc:
        raise FervggError(f"`detector` mtcnn needs the mtcnn package ({exc}): "
                          "pip install mtcnn==1.0.0, or use `detector` retinaface") from None
    return MTCNN(device="CPU:0")


def load_detector(detector: str) -> None:
    """Load a detector now (not at the first photo), so that a missing piece is one clear
    error before any work. MTCNN imports TensorFlow: seconds."""
    if detector == "retinaface":
        from fervgg import retinaface

        retinaface.detector()
    elif detector == "opencv":
        _cascade(PROPOSE_CASCADE)
        _cascade(CONFIRM_CASCADE)
    elif detector == "mtcnn":
        _mtcnn()


def _detect_mtcnn(image: Image.Image) -> list[Detection]:
    # Always hand MTCNN decoded pixels: given a string it would open the file itself.
    pixels = np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if min(pixels.shape[:2]) < 12:
        return []
    results = _mtcnn().detect_faces(pixels)
    found = []
    for face in results or []:
        if face.get("confidence", 0.0) >= MTCNN_MIN_CONFIDENCE:
            x, y, w, h = (float(v) for v in face["box"])
            found.append(Detection((x, y, w, h), float(face["confidence"])))
    return found


_DETECT = {"retinaface": _detect_retinaface, "opencv": _detect_opencv, "mtcnn": _detect_mtcnn}
