"""fervgg: facial emotion recognition with VGG16.

    from fervgg import EmotionRecognizer
    rec = EmotionRecognizer()                    # shipped model, fastest backend, default detector
    faces = rec.predict("photo.jpg")             # a path, a PIL image or a numpy array
    faces[0].emotion, faces[0].confidence, faces[0].probabilities, faces[0].box

Every error of ours is a FervggError whose message is one line.
"""

from __future__ import annotations

import importlib

from fervgg.common import FervggError

__version__ = "0.2.0"

# The public names, imported on first use so that `import fervgg.config` stays light.
_LAZY = {
    "EmotionRecognizer": "fervgg.recognizer",
    "Face": "fervgg.recognizer",
    "to_fer_format": "fervgg.recognizer",
}

__all__ = ["FervggError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fervgg' has no attribute {name!r}")
