"""Settings checked where they enter, by the Python API and the command line alike: each
error names the setting, the value given and what is allowed."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, if it is a whole number >= minimum; else ValueError."""
    whole = (not isinstance(value, bool) and isinstance(value, (int, float))
             and math.isfinite(value) and int(value) == value)
    if not whole or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number > 0; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` as a float, if 0 < value <= 1; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def cli_type(check: Callable[..., Any], number: type = int, **limits: Any
             ) -> Callable[[str], Any]:
    """An argparse ``type`` that parses a number and applies ``check``; argparse then
    reports ``argument --flag: must be ..., got VALUE``."""

    def parse(text: str) -> Any:
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if number is int else 'a number'}, "
                f"got {text!r}") from None
        try:
            return check("it", value, **limits)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("it ")) from None

    parse.__name__ = check.__name__  # argparse names the type in some messages
    return parse
