"""fervgg: facial emotion recognition with VGG16.

    from fervgg import EmotionRecognizer
    faces = EmotionRecognizer().predict("photo.jpg")

Every error of ours is a FervggError whose message is one line.
"""

from fervgg.common import FervggError

__all__ = ["FervggError"]
