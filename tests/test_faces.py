"""fervgg.faces without ../shared, so CI tests detection: the demo data's drawn faces are
faces to the Haar cascades (not to RetinaFace, trained on photos), and matplotlib's sample
photo of Grace Hopper is one to RetinaFace; on the shared photos when ../shared exists."""

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fervgg import config, faces, imaging, retinaface
from fervgg.common import FervggError
from fervgg.demo_data import draw_face

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # bench/face_detection.py: its scoring, for the WIDER test


def canvas_with(faces_at: list[tuple[str, int, int, int]], size=(640, 400)) -> Image.Image:
    rng = np.random.default_rng(0)
    canvas = Image.new("RGB", size, (120, 130, 140))
    for emotion, x, y, side in faces_at:
        canvas.paste(draw_face(emotion, rng, side).convert("RGB"), (x, y))
    return canvas


def test_two_drawn_faces_are_found_where_they_are():
    placed = [("happy", 60, 80, 110), ("neutral", 380, 120, 170)]
    boxes = faces.detect_faces(canvas_with(placed), "opencv")
    assert len(boxes) == 2
    for (_, x, y, side), box in zip(placed, boxes):  # boxes come left to right
        assert faces.iou(box, (x, y, side, side)) > 0.4, (box, (x, y, side))


def test_no_face_on_a_plain_or_noisy_image():
    noise = np.random.default_rng(1).integers(0, 256, (400, 640, 3), dtype=np.uint8)
    for detector in ("retinaface", "opencv"):
        assert faces.detect_faces(Image.new("RGB", (640, 400), (200, 200, 200)), detector) == []
        assert faces.detect_faces(Image.fromarray(noise), detector) == []


@pytest.mark.parametrize("max_side", [320, 640])
def test_downscaled_detection_reports_boxes_in_original_pixels(max_side):
    placed = [("sad", 500, 300, 200)]
    boxes = faces.detect_faces(canvas_with(placed, size=(1280, 720)), "opencv", max_side=max_side)
    assert len(boxes) == 1
    assert faces.iou(boxes[0], (500, 300, 200, 200)) > 0.4


# ------------------------------------------------------------------------------ RetinaFace

SHARED = ROOT.parent / "shared"
needs_photos = pytest.mark.skipif(not (SHARED / "photos" / "two_people.jpg").is_file(),
                                  reason="../shared/photos is not available")


def test_retinaface_is_the_default_and_ships_in_the_package():
    assert faces.DETECTORS[0] == config.DETECTOR == "retinaface"
    assert retinaface.MODEL_PATH.is_file() and retinaface.MODEL_PATH.stat().st_size < 5e6


def hopper() -> Image.Image:
    """A real face that needs no ../shared: matplotlib's sample photo of Grace Hopper
    (U.S. Navy, public domain); its face box found by RetinaFace, in its 512x600 pixels."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return image.convert("RGB")


HOPPER_FACE = (178, 107, 176, 221)


def photo_canvas(places: list[tuple[int, int, float]], size: tuple[int, int]) -> tuple[Image.Image, list]:
    """Copies of the Hopper photo at (x, y, scale) on a grey canvas; their face boxes."""
    canvas, boxes = Image.new("RGB", size, (120, 130, 140)), []
    for x, y, scale in places:
        photo = hopper()
        photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        canvas.paste(photo, (x, y))
        fx, fy, fw, fh = HOPPER_FACE
        boxes.append((x + fx * scale, y + fy * scale, fw * scale, fh * scale))
    return canvas, boxes


def test_retinaface_finds_two_faces_without_tensorflow():
    """In a fresh interpreter: the default detector loads, finds both faces where they are,
    and never imports TensorFlow."""
    canvas, truth = photo_canvas([(10, 20, 0.6), (500, 60, 0.9)], (1000, 640))
    code = (
        "import sys, pickle; from fervgg import faces\n"
        "boxes = faces.detect_faces(pickle.loads(sys.stdin.buffer.read()))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(repr((boxes, heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(canvas), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    boxes, heavy = eval(proc.stdout.decode())
    assert heavy == []
    assert len(boxes) == 2 and all(faces.iou(b, t) > 0.7 for b, t in zip(boxes, truth)), (boxes, truth)


@pytest.mark.parametrize("size,max_side", [((641, 399), 1024), ((1333, 917), 1024), ((1333, 917), 480)])
def test_retinaface_boxes_are_in_original_pixels(size, max_side):
    """Odd sizes (the anchors follow the size) and downscaling: the box is where the face is."""
    canvas, (truth,) = photo_canvas([(31, 17, size[1] / 700)], size)
    boxes = faces.detect_faces(canvas, "retinaface", max_side=max_side)
    assert len(boxes) == 1 and faces.iou(boxes[0], truth) > 0.7, (boxes, truth)


def test_retinaface_ignores_tiny_images_and_unknown_detectors_are_one_error():
    assert faces.detect_faces(Image.new("RGB", (20, 20)), "retinaface") == []
    with pytest.raises(FervggError, match="`detector`"):
        faces.detect_faces(Image.new("RGB", (64, 64)), "haar")


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], np.float32)
    assert retinaface.nms(boxes, np.array([0.8, 0.9, 0.7]), 0.4) == [1, 2]


@needs_photos
@pytest.mark.parametrize("detector", ["retinaface", "opencv"])
def test_shared_photos_give_their_face_counts(detector):
    expected = {"obama.jpg": 1, "biden.jpg": 1, "obama-240p.jpg": 1, "32bit.png": 1,
                "two_people.jpg": 2, "obama_partial_face.jpg": 1}
    found = {name: len(faces.detect_faces(imaging.to_rgb(imaging.open_image(SHARED / "photos" / name)), detector))
             for name in expected}
    assert found == expected


@needs_photos
def test_retinaface_finds_the_partly_hidden_face_where_it_is():
    image = imaging.to_rgb(imaging.open_image(SHARED / "photos" / "obama_partial_face.jpg"))
    (box,) = faces.detect_faces(image)
    x, y, w, h = box
    assert x == 0 and w > 0.25 * image.width  # cut by the left edge, and large


@pytest.mark.skipif(not (SHARED / "faces" / "annotations.json").is_file(), reason="../shared/faces is not available")
def test_retinaface_recall_and_precision_on_wider_face_photos():
    """The acceptance numbers on a third of ../shared/faces (20 photos, kept short)."""
    bench = importlib.import_module("face_detection")
    photos = bench.load(SHARED / "faces")[::3]
    found = [faces.detect_faces(image) for _, image, _, _ in photos]
    right, false, total = bench.score(found, photos, 40)
    assert right / total >= 0.88 and right / (right + false) >= 0.90, (right, false, total)
