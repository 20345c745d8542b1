"""How the ``mcp-db`` command writes what it found: ages, counts, and a scan's progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def ago(ms: float | None) -> str:
    """``3s``, ``5m``, ``2h``, ``4d`` (or ``-``)."""
    if ms is None:
        return "-"
    seconds = max(0.0, ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def plural(n: int, word: str) -> str:
    """``1 session``, ``2 sessions``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class Progress:
    """Counts keys during a SCAN on stderr, as SCAN walks the whole keyspace however few keys
    match. On a terminal: a counter that updates in place, shown once a scan takes longer
    than half a second and wiped at the end. Otherwise: one line every ``every`` keys."""

    def __init__(self, stream: TextIO | None = None, every: int = 100_000) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every

    def count(self, label: str, keys: Iterable[bytes]) -> Iterator[bytes]:
        started = shown = time.monotonic()
        drawn = False
        for n, key in enumerate(keys, 1):
            yield key
            if self.tty:
                now = time.monotonic()
                if now - started > 0.5 and now - shown > 0.1:
                    self.stream.write(f"\rscanning {label}: {n:,} keys")
                    self.stream.flush()
                    shown, drawn = now, True
            elif n % self.every == 0:
                self.stream.write(f"scanning {label}: {n:,} keys so far\n")
                self.stream.flush()
        if drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
