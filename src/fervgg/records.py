"""Prediction records and the one writer for every output format.

A record is a flat-enough dict per face: photos (`photo_record`) and video rows
(`video.row_record`) both carry the box, the emotion, its confidence and every class
probability. `RecordWriter` streams them as text, JSON lines, CSV (one column per class)
or one JSON array at the end.
"""

from __future__ import annotations

import csv
import json
import sys
from typing import Callable, Iterable

import numpy as np

OUTPUT_MODES = ("text", "json", "jsonl", "csv")
TOP_K = 3  # text and JSON name the three likeliest emotions
PHOTO_FIELDS = ["image", "face", "face_found", "x", "y", "w", "h", "emotion", "confidence"]


def probability_columns(class_names: list[str], fields: list[str]) -> list[str]:
    """One column per class probability, named after the class (prefixed if it clashes)."""
    return [n if n not in fields else f"p_{n}" for n in class_names]


def probabilities(class_names: list[str], probs: np.ndarray) -> dict[str, float]:
    return {name: round(float(p), 6) for name, p in zip(class_names, probs)}


def photo_record(image: str, face: int, faces_in_image: int, face_found: bool | None,
                 box: tuple[int, int, int, int], class_names: list[str], probs: np.ndarray) -> dict:
    """One face of a photo. face_found: True (detected), False (none found: the whole
    image), None (detection off: the image is the face)."""
    order = np.argsort(-probs, kind="stable")[:TOP_K]
    top = [{"emotion": class_names[j], "probability": round(float(probs[j]), 6)} for j in order]
    return {
        "image": image,
        "face": face,
        "faces_in_image": faces_in_image,
        "face_found": face_found,
        "box": {"x": box[0], "y": box[1], "w": box[2], "h": box[3]},
        "emotion": top[0]["emotion"],
        "confidence": top[0]["probability"],
        "top3": top,
        "probabilities": probabilities(class_names, probs),
    }


def photo_csv_row(record: dict) -> list:
    b = record["box"]
    found = "" if record["face_found"] is None else str(record["face_found"]).lower()
    return [record["image"], record["face"], found, b["x"], b["y"], b["w"], b["h"], record["emotion"],
            f"{record['confidence']:.6f}", *(f"{p:.6f}" for p in record["probabilities"].values())]


class RecordWriter:
    """Streams records to `stream` (stdout) in one of OUTPUT_MODES, flushed as they come.

    `header` and `csv_row` define the CSV form; `text` turns a record into a text line.
    """

    def __init__(self, mode: str, header: list[str], csv_row: Callable[[dict], list] | None = None,
                 text: Callable[[dict], str] | None = None, stream=None):
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output mode {mode!r}")
        self.mode, self.stream = mode, stream or sys.stdout
        self.csv_row = csv_row or (lambda record: list(record.values()))
        self.text = text or json.dumps
        self.collected: list[dict] = []
        self.count = 0
        if mode == "csv":
            self._csv = csv.writer(self.stream, lineterminator="\n")
            self._csv.writerow(header)

    def write(self, records: Iterable[dict]) -> None:
        wrote = False
        for record in records:
            wrote = True
            self.count += 1
            if self.mode == "json":
                self.collected.append(record)
            elif self.mode == "jsonl":
                self.stream.write(json.dumps(record) + "\n")
            elif self.mode == "csv":
                self._csv.writerow(self.csv_row(record))
            else:
                self.stream.write(self.text(record) + "\n")
        if wrote:
            self.stream.flush()

    def close(self) -> None:
        if self.mode == "json":
            self.stream.write(json.dumps(self.collected, indent=1) + "\n")
            self.stream.flush()
