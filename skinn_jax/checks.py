"""Small validators shared by configs and the command line.

Each raises ``ValueError`` naming the setting, its value and the rule, e.g.
``learning_rate = nan: must be a finite number > 0``. The ``arg_*`` factories wrap them as
``argparse`` types, so a bad flag is reported by argparse (with the flag's name) before any
work starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (a bool or a fractional number is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"{name} = {value!r}: must be an integer")
        value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} = {value}: must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} = {value}: must be an integer <= {maximum}")
    return value


def check_float(
    name: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite float in the given range (``open_*``: the bound itself excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} = {value!r}: must be a real number")
    value = float(value)
    rule = _float_rule(minimum, maximum, open_min, open_max)
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value}: must be {rule}")
    low_bad = minimum is not None and (value <= minimum if open_min else value < minimum)
    high_bad = maximum is not None and (value >= maximum if open_max else value > maximum)
    if low_bad or high_bad:
        raise ValueError(f"{name} = {value:g}: must be {rule}")
    return value


def _float_rule(minimum, maximum, open_min: bool, open_max: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if open_min else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<' if open_max else '<='} {maximum:g}")
    return "a finite number" + (" " + " and ".join(parts) if parts else "")


def arg_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An ``argparse`` type: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        return _as_argparse_error(check_int, "value", value, minimum, maximum)

    parse.__name__ = "integer"
    return parse


def arg_float(minimum: float | None = None, maximum: float | None = None, **kw) -> Callable:
    """An ``argparse`` type: a finite float in the given range (see :func:`check_float`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        return _as_argparse_error(check_float, "value", value, minimum, maximum, **kw)

    parse.__name__ = "number"
    return parse


def _as_argparse_error(check: Callable, *args, **kw):
    try:
        return check(*args, **kw)
    except ValueError as err:
        # "value = -1: must be an integer >= 1" -> argparse adds "argument --flag: "
        raise argparse.ArgumentTypeError(str(err).removeprefix("value = ")) from None


def writable_directory(path: Path, flag: str) -> Path:
    """``path`` as a directory that exists or can be created and is writable.

    Raises:
        ValueError: ``path`` is a file, or it (or its nearest existing parent) is not writable.
    """
    import os

    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not a writable directory")
    return path
