"""Structured run logs: one JSON object per line for stage start/end, counts and timings."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class RunLog:
    """Append JSON-lines events to a file (``-`` for stderr); a no-op when ``target`` is None.

    Example::

        log = RunLog("run.jsonl")
        with log.stage("ingest") as record:
            record["counts"] = {"frames": 10}
    """

    def __init__(self, target: str | None) -> None:
        self._fh: IO[str] | None = None
        if target == "-":
            self._fh = sys.stderr
        elif target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._fh = Path(target).open("a", encoding="utf-8")  # noqa: SIM115 - kept open for the run, closed by close()

    def event(self, event: str, **fields: Any) -> None:
        """Write one event line with a UTC timestamp."""
        if self._fh is None:
            return
        record = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        self._fh.write(json.dumps(record, default=str) + "\n")
        self._fh.flush()

    @contextmanager
    def stage(self, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Log ``stage_start``/``stage_end`` (or ``stage_failed``) around a block; the yielded dict's
        items are added to the end event (e.g. counts)."""
        extra: dict[str, Any] = {}
        started = time.perf_counter()
        self.event("stage_start", stage=name, **fields)
        try:
            yield extra
        except BaseException as exc:
            self.event(
                "stage_failed",
                stage=name,
                error_class=type(exc).__name__,
                duration_s=round(time.perf_counter() - started, 3),
            )
            raise
        self.event("stage_end", stage=name, duration_s=round(time.perf_counter() - started, 3), **extra)

    def close(self) -> None:
        """Close the file (never stderr)."""
        if self._fh is not None and self._fh is not sys.stderr:
            self._fh.close()
        self._fh = None
