"""Every string inside a nested JSON-like value (a Plotly figure's dict or spec)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from strings(v)
    elif isinstance(value, np.ndarray) and value.dtype == object:
        yield from strings(value.tolist())
