"""fervgg.faces on generated images, so CI tests detection without ../shared: the demo
data's drawn faces are faces to OpenCV's Haar cascades."""

import numpy as np
import pytest
from PIL import Image

from fervgg import faces
from fervgg.demo_data import draw_face


def canvas_with(faces_at: list[tuple[str, int, int, int]], size=(640, 400)) -> Image.Image:
    rng = np.random.default_rng(0)
    canvas = Image.new("RGB", size, (120, 130, 140))
    for emotion, x, y, side in faces_at:
        canvas.paste(draw_face(emotion, rng, side).convert("RGB"), (x, y))
    return canvas


def test_two_drawn_faces_are_found_where_they_are():
    placed = [("happy", 60, 80, 110), ("neutral", 380, 120, 170)]
    boxes = faces.detect_faces(canvas_with(placed))
    assert len(boxes) == 2
    for (_, x, y, side), box in zip(placed, boxes):  # boxes come left to right
        assert faces.iou(box, (x, y, side, side)) > 0.4, (box, (x, y, side))


def test_no_face_on_a_plain_or_noisy_image():
    assert faces.detect_faces(Image.new("RGB", (640, 400), (200, 200, 200))) == []
    noise = np.random.default_rng(1).integers(0, 256, (400, 640, 3), dtype=np.uint8)
    assert faces.detect_faces(Image.fromarray(noise)) == []


@pytest.mark.parametrize("max_side", [320, 640])
def test_downscaled_detection_reports_boxes_in_original_pixels(max_side):
    placed = [("sad", 500, 300, 200)]
    boxes = faces.detect_faces(canvas_with(placed, size=(1280, 720)), max_side=max_side)
    assert len(boxes) == 1
    assert faces.iou(boxes[0], (500, 300, 200, 200)) > 0.4
