"""Running an exported .tflite model with the LiteRT runtime (ai-edge-litert).

This module must never import TensorFlow or Keras: it is what makes prediction start in
a fraction of a second instead of several seconds.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fervgg.common import FervggError, check_gray_input, first_line, redirected_stderr

# Printed by LiteRT's C++ code on every start; not worth a user's attention.
_NOISE = ("Created TensorFlow Lite XNNPACK delegate",)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def _filtered_stderr():
    """Capture what native code writes to file descriptor 2; pass on all but _NOISE."""
    with tempfile.TemporaryFile() as capture:
        with redirected_stderr(capture.fileno()):
            yield
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line and not any(n in line for n in _NOISE)]
    if kept:
        print("\n".join(kept), file=sys.stderr)


class LiteRTClassifier:
    """A .tflite image classifier: (N, S, S, 1) pixels -> (N, classes) probabilities."""

    def __init__(self, path: Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise FervggError(f"LiteRT model not found: {self.path} (create it with "
                            f"scripts/export_model.py --model {self.path.with_suffix('.keras')})")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or cpu_count())
        except (ValueError, RuntimeError) as exc:
            raise FervggError(f"cannot load LiteRT model {self.path}: {first_line(exc)} "
                            "(re-create it with scripts/export_model.py)") from None
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise FervggError(f"{self.path}: expected one input and one output, got "
                            f"{len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        shape = [int(v) for v in self._input.get("shape_signature", self._input["shape"])]
        self.image_size = check_gray_input(shape, self.path)
        self.num_outputs = int(self._output["shape"][-1])
        self._dynamic_batch = shape[0] == -1
        self._batch = None

    def _allocate(self, batch: int) -> None:
        if batch == self._batch:
            return
        with _filtered_stderr():
            self.interpreter.resize_tensor_input(
                self._input["index"], [batch, self.image_size, self.image_size, 1], strict=False)
            self.interpreter.allocate_tensors()
        self._batch = batch

    def predict(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for (N, S, S, 1) or (N, S, S) pixels 0-255, in chunks of batch_size."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
        n = len(pixels)
        if n == 0:
            return np.zeros((0, self.num_outputs), np.float32)
        if not self._dynamic_batch:
            batch_size = 1
        dtype = self._input["dtype"]
        out = []
        for start in range(0, n, batch_size):
            chunk = np.ascontiguousarray(pixels[start:start + batch_size], dtype=dtype)
            self._allocate(len(chunk))
            self.interpreter.set_tensor(self._input["index"], chunk)
            self.interpreter.invoke()
            out.append(np.array(self.interpreter.get_tensor(self._output["index"]), dtype=np.float32))
        return np.concatenate(out)
