"""Running an exported .tflite model with the LiteRT runtime (ai-edge-litert).

This module must never import TensorFlow or Keras: it is what makes prediction start in
a fraction of a second instead of several seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fervgg.classifiers import EXPORT_HINT, Classifier
from fervgg.common import FervggError, check_gray_input, filtered_stderr, first_line
from fervgg.emotion_model import check_model_file

# Printed by LiteRT's C++ code on every start; not worth a user's attention.
LITERT_NOISE = ("Created TensorFlow Lite XNNPACK delegate",)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LiteRTClassifier(Classifier):
    """A .tflite image classifier: (N, S, S, 1) pixels -> (N, classes) probabilities."""

    backend = "litert"

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        path = check_model_file(path)
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or cpu_count())
        except (ValueError, RuntimeError) as exc:
            raise FervggError(f"cannot load LiteRT model {path}: {first_line(exc)} (re-{EXPORT_HINT})") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise FervggError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        shape = [int(v) for v in self._input.get("shape_signature", self._input["shape"])]
        super().__init__(path, check_gray_input(shape, path), int(self._output["shape"][-1]))
        self._dynamic_batch = shape[0] == -1
        self._batch = None

    def _allocate(self, batch: int) -> None:
        if batch == self._batch:
            return
        with filtered_stderr(*LITERT_NOISE):
            self.interpreter.resize_tensor_input(
                self._input["index"], [batch, self.image_size, self.image_size, 1], strict=False)
            self.interpreter.allocate_tensors()
        self._batch = batch

    def predict(self, pixels, batch_size: int = 64) -> np.ndarray:
        if not self._dynamic_batch:
            batch_size = 1
        return super().predict(pixels, batch_size)

    def _predict_batch(self, batch: np.ndarray) -> np.ndarray:
        self._allocate(len(batch))
        self.interpreter.set_tensor(self._input["index"], batch.astype(self._input["dtype"], copy=False))
        self.interpreter.invoke()
        out = np.array(self.interpreter.get_tensor(self._output["index"]), dtype=np.float32)
        # A full-integer model's softmax is int8, in steps of 1/256: its rows sum to 1 only within
        # about 0.01 (evaluation then took them for logits). Rescaled, they are probabilities again.
        sums = out.sum(axis=-1, keepdims=True)
        if out.ndim == 2 and (out >= 0).all() and (np.abs(sums - 1) < 0.05).all():
            out /= sums
        return out
