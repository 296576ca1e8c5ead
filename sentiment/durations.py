"""Durations as k6 and Prometheus write them ("500ms", "5s", "2m", "1m30s"), in seconds: the one parser
the load shapes, the pool sizing and the Prometheus configuration share."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(duration: str) -> float:
    """Seconds of a duration made of number-unit parts; a bare number is seconds. ValueError otherwise."""
    text = duration.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"{duration!r} is not a duration such as 500ms, 5s, 2m or 1m30s")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)
