"""RetinaFace (MobileNet-0.25) face detection on the LiteRT runtime: RGB pixels -> boxes.

The model file ships in the package (fervgg/data/retinaface_mnet025.tflite, 1.7 MB; its
source, licence and how it was converted: fervgg/data/README.md). It takes one uint8 RGB
image of any size (channel order and mean are handled inside the model) and returns, for
every anchor, a box offset and a face probability; decoding them into boxes is below.
Like litert_runtime, this module never imports TensorFlow.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from fervgg.common import FervggError, filtered_stderr, first_line
from fervgg.litert_runtime import LITERT_NOISE, cpu_count

MODEL_PATH = Path(__file__).resolve().parent / "data" / "retinaface_mnet025.tflite"

# The network's anchors (biubug6/Pytorch_Retinaface, cfg_mnet): two square anchor sizes per
# cell of the stride-8, -16 and -32 feature maps, and the box-encoding variances.
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
NMS_IOU = 0.4  # RetinaFace's own suppression threshold


@lru_cache(maxsize=8)
def anchors(height: int, width: int) -> np.ndarray:
    """(N, 4) anchor centres and sizes (cx, cy, w, h) in pixels, in the network's output order."""
    parts = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.mgrid[0:rows, 0:cols]
        centres = (np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32) + 0.5) * stride
        centres = np.repeat(centres, len(sizes), axis=0)
        side = np.tile(np.asarray(sizes, np.float32), rows * cols)[:, None]
        parts.append(np.concatenate([centres, side, side], 1))
    return np.concatenate(parts)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression; boxes are (x, y, w, h)."""
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        inter = (np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
                 * np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None))
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= threshold]
    return keep


class RetinaFace:
    """The detector: one LiteRT interpreter, re-allocated when the image size changes
    (video frames keep one size, so that happens once per clip)."""

    def __init__(self, path: Path = MODEL_PATH, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise FervggError(f"face detector model not found: {self.path} (reinstall the package; "
                              "or choose `detector` opencv)")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or cpu_count())
        except (ValueError, RuntimeError) as exc:
            raise FervggError(f"cannot load face detector model {self.path}: {first_line(exc)}") from None
        self._input = self.interpreter.get_input_details()[0]
        outputs = self.interpreter.get_output_details()
        # Two outputs: boxes (1, N, 4) and face probabilities (1, N).
        self._boxes = next(o["index"] for o in outputs if len(o["shape_signature"]) == 3)
        self._scores = next(o["index"] for o in outputs if len(o["shape_signature"]) == 2)
        self._shape: tuple[int, int] | None = None

    def detect(self, pixels: np.ndarray, min_score: float, min_side: float) -> list[tuple[tuple, float]]:
        """Faces in (H, W, 3) uint8 RGB pixels: [((x, y, w, h), score)], best first; only
        faces scoring at least min_score whose larger side is at least min_side pixels."""
        height, width = pixels.shape[:2]
        if (height, width) != self._shape:
            with filtered_stderr(*LITERT_NOISE):
                self.interpreter.resize_tensor_input(self._input["index"], [1, height, width, 3], strict=False)
                self.interpreter.allocate_tensors()
            self._shape = (height, width)
        self.interpreter.set_tensor(self._input["index"], np.ascontiguousarray(pixels, np.uint8)[None])
        self.interpreter.invoke()
        scores = self.interpreter.get_tensor(self._scores)[0]
        chosen = np.flatnonzero(scores >= min_score)
        if chosen.size == 0:
            return []
        offsets = self.interpreter.get_tensor(self._boxes)[0][chosen]
        prior = anchors(height, width)[chosen]
        centre = prior[:, :2] + offsets[:, :2] * CENTRE_VARIANCE * prior[:, 2:]
        size = prior[:, 2:] * np.exp(offsets[:, 2:] * SIZE_VARIANCE)
        boxes = np.concatenate([centre - size / 2, size], 1)
        scores = scores[chosen]
        big = size.max(axis=1) >= min_side
        boxes, scores = boxes[big], scores[big]
        return [(tuple(float(v) for v in boxes[i]), float(scores[i])) for i in nms(boxes, scores, NMS_IOU)]


@lru_cache(maxsize=1)
def detector() -> RetinaFace:
    """The shared detector, loaded at first use."""
    return RetinaFace()
