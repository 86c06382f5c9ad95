"""Checks shared by the settings dataclasses (TrainSettings, PreprocessSettings, ...): each
field converted to its declared type and every number within its range, so a bad value is
one FervggError naming the setting (`like_this`) before any work starts. The command line
checks its flags against the same ranges (scripts/cli.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from fervgg.common import FervggError


def out_of_range(value: float, low: float | None = None, high: float | None = None, *,
                 above: float | None = None, below: float | None = None) -> str | None:
    """Why `value` is not a finite number within the bounds (low/high inclusive,
    above/below exclusive), e.g. "out of range (must be finite and >= 1)"; None if it is."""
    if math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high) \
            and (above is None or value > above) and (below is None or value < below):
        return None
    limits = [f">= {low:g}" if low is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {high:g}" if high is not None else "", f"< {below:g}" if below is not None else ""]
    wanted = " and ".join(x for x in limits if x)
    return f"out of range (must be finite and {wanted})" if wanted else "not a finite number"


def check_settings(settings, ranges: dict[str, dict]) -> None:
    """Convert every field of the dataclass `settings` to its declared type (str and Path,
    int to float: the same values as flags parse to) and check `ranges` ({field: bounds of
    out_of_range}); FervggError for the first that fails. None passes where it is allowed."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        kinds = {kind.strip() for kind in str(f.type).split("|")}
        if value is None and "None" in kinds:
            continue
        if "Path" in kinds and isinstance(value, str):
            value = Path(value)
        elif "str" in kinds and isinstance(value, Path):  # e.g. `weights`, a name or a file
            value = str(value)
        elif "float" in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif "int" in kinds and (isinstance(value, bool) or not isinstance(value, int)):
            raise FervggError(f"`{f.name}` must be an integer, got {value!r}")
        setattr(settings, f.name, value)
        if f.name in ranges:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FervggError(f"`{f.name}` must be a number, got {value!r}")
            problem = out_of_range(value, **ranges[f.name])
            if problem:
                raise FervggError(f"`{f.name}` {value} is {problem}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FervggError(f"`{name}` {value!r} is not one of {', '.join(choices)}")
