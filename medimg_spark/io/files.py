"""Turn one file's bytes into rows of the ``images``, ``instances`` and ``quarantine`` tables.

This is the per-file core of ingest, a plain Python function (no Spark) so it can be tested on
its own; :mod:`medimg_spark.io.ingest` runs it inside executors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from medimg_spark.errors import (
    DecodeError,
    EmptyFileError,
    FileTimeoutError,
    FileTooLargeError,
    IngestFileError,
    MalformedFileError,
    UnsupportedFormatError,
    WorkerCrashError,
)
from medimg_spark.io import detect, readers
from medimg_spark.io.model import ParsedFile
from medimg_spark.io.pixels import encode
from medimg_spark.storage import local_path  # one definition: a Hadoop path string → its local file

if TYPE_CHECKING:
    from medimg_spark.config import SplitRule

IMAGE = "image"
INSTANCE = "instance"
QUARANTINE = "quarantine"


@dataclass
class FileContext:
    """Everything the per-file function needs; pickled once per task.

    Attributes:
        run_id: the ingest run id written to every row.
        default_modality: modality of non-DICOM files.
        max_decompressed_bytes: limit for gzip-wrapped files and the members of ``.npz`` archives.
        max_decoded_bytes: refuse (before decoding) pixels that would take more memory than this.
        max_seconds_per_file: time budget of one file's parse and decode (None: no limit).
        crash_dir: folder of the crash guards' marks (see :class:`CrashGuard`); None disables them.
        max_file_bytes: largest local file a task reads (larger ones are quarantined unread).
        labels_by_path: ``{local path: (label, split)}`` from ``--labels``.
        labels_by_sha: ``{file sha256: (label, split)}`` from ``--labels``.
        label_from_parent_dir: take the label from the parent folder's name.
        deidentify: applied to every DICOM dataset before metadata is extracted.
        split_rule: ``ingest.split``: assigns a split to frames that have none (see
            :func:`medimg_spark.io.splits.split_of_file`).
        source_path: the file being parsed (set per file by :func:`process_file`): detached headers
            read their data file next to it (:mod:`medimg_spark.io.detached`).
    """

    run_id: str
    default_modality: str = "OT"
    max_decompressed_bytes: int = 1 << 30
    max_decoded_bytes: int = 512 << 20
    max_seconds_per_file: float | None = None
    crash_dir: str | None = None
    max_file_bytes: int = 2**31 - 1
    labels_by_path: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    labels_by_sha: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    label_from_parent_dir: bool = False
    deidentify: Callable[[Any], Any] | None = None
    split_rule: SplitRule | None = None
    source_path: str | None = None


def image_id(file_sha256: str, frame_index: int) -> str:
    """Stable frame id: sha256 of the file's sha256 and the frame index."""
    return hashlib.sha256(f"{file_sha256}:{frame_index}".encode()).hexdigest()


def _parse(data: bytes, ctx: FileContext, recovered: list[str]) -> ParsedFile:
    """Detect and parse; a file that fails and is the data file a detached header of its folder names
    (``.nhdr``/``.mhd``) fails as :class:`~medimg_spark.io.detached.DataOfDetachedHeaderError` instead."""
    try:
        return _parse_content(data, ctx, recovered)
    except Exception:
        from medimg_spark.io.detached import DataOfDetachedHeaderError, header_naming

        header = header_naming(ctx.source_path)
        if header is None:
            raise
        raise DataOfDetachedHeaderError(
            f"raw data of the detached header {header!r} (which names this file): its voxels are ingested "
            "through that header, not from this file alone"
        ) from None


def _parse_content(data: bytes, ctx: FileContext, recovered: list[str]) -> ParsedFile:
    fmt = detect.detect_format(data)
    if fmt == detect.GZIP:
        data = detect.gunzip(data, ctx.max_decompressed_bytes)
        recovered.append("gunzip")
        fmt = detect.detect_format(data)
        if fmt == detect.GZIP:
            raise UnsupportedFormatError("nested gzip streams are not supported; decompress the file first")
    if fmt == detect.ZIP:
        raise UnsupportedFormatError("zip archive whose members are not .npy arrays; extract it first")
    fmt, reader = readers.reader_for(fmt, data)  # UnsupportedFormatError names the supported formats
    return reader.load()(data, fmt, ctx)


def _base_row(path: str, content: bytes | None, ctx: FileContext) -> dict[str, Any]:
    """Columns every row of a file carries (hash and size unknown when it could not be read)."""
    return {
        "source_path": path,
        "file_sha256": hashlib.sha256(content).hexdigest() if content is not None else None,
        "size_bytes": len(content) if content is not None else None,
        "ingest_run_id": ctx.run_id,
    }


def _stage_error(stage: str) -> type[IngestFileError] | None:
    """The error class a library's own exception is quarantined as, by the stage it escaped from."""
    if stage == "read":
        from medimg_spark.io.planning import UnreadablePathError

        return UnreadablePathError
    return {"parse": MalformedFileError, "decode": DecodeError}.get(stage)


def _quarantine(
    base: dict[str, Any], stage: str, exc: BaseException, frame_index: int | None = None, redact: bool = False
) -> dict:
    """One quarantine row. At ``read``, ``parse`` and ``decode`` ``error_class`` is one of ingest's own
    (:class:`IngestFileError`): a library's exception (``zlib.error``, ``OSError``, ``MemoryError``...) is
    reported as its stage's class (:func:`_stage_error`), its own class name leading the message. The
    ``deid`` stage's errors are typed by the de-identification hook (``DeidProcessingError``)."""
    stage = getattr(exc, "medimg_stage", stage)
    text = str(exc).strip()
    message = " | ".join(line.strip() for line in text.splitlines() if line.strip()) if text else repr(exc)
    error_class = type(exc).__name__
    typed = _stage_error(stage) if not isinstance(exc, IngestFileError) else None
    if typed is not None:
        message, error_class = f"{error_class}: {message}", typed.__name__
    return {
        "_kind": QUARANTINE,
        **base,
        "frame_index": frame_index,
        "stage": stage,
        "step": None,
        "error_class": error_class,
        "error_message": (_withhold(message) if redact else message)[:2000],
    }


def _withhold(message: str) -> str:
    from medimg_spark.privacy.hook import withhold_values

    return withhold_values(message)


def _labels(path: str, sha: str, ctx: FileContext) -> tuple[str | None, str | None] | None:
    if sha in ctx.labels_by_sha:
        return ctx.labels_by_sha[sha]
    local = local_path(path)
    if local in ctx.labels_by_path:
        return ctx.labels_by_path[local]
    if ctx.label_from_parent_dir:
        parent = posixpath.basename(posixpath.dirname(local))
        return (parent or None, None)
    return None


_DROP = logging.NullHandler()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings and the ``pydicom`` logger (their messages may quote identifying values)."""
    logger = logging.getLogger("pydicom")
    # Child loggers (pydicom.pixels.decoders...) ignore a parent's ``disabled``: stop propagation at
    # "pydicom" and give it a handler that drops everything, so nothing reaches root or lastResort.
    saved = (logger.disabled, logger.propagate)
    logger.disabled, logger.propagate = True, False
    logger.addHandler(_DROP)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeHandler(_DROP)
        logger.disabled, logger.propagate = saved


#: Exceptions that are never a file's fault: they stop the worker as they would without medimg.
_NOT_A_FILE_ERROR = (KeyboardInterrupt, SystemExit, GeneratorExit)


class TimeBudget:
    """A per-file time limit, enforced with ``SIGALRM`` in the worker's main thread.

    The time spent inside :meth:`running` blocks is summed; when it exceeds ``seconds`` a
    :class:`FileTimeoutError` is raised at the next Python bytecode. Native code (a codec) is not
    interrupted: it is bounded by the size checks made before decoding, and the alarm fires when it
    returns. Outside the main thread, or without ``seconds``, the budget is not enforced.

    ``expired`` stays true once the alarm has fired: a library that catches every exception (pydicom's
    loop over its decoder plugins, its tolerant header reader) turns the timeout into an error of its own
    (``RuntimeError``, a bad tag, a ``KeyError``) or returns a result that may be cut short: a block in
    which the alarm fired always leaves with :class:`FileTimeoutError` (:meth:`outcome`), raised or not.
    """

    _MESSAGE = (
        "reading this file took longer than ingest.max_seconds_per_file; raise the limit if the "
        "file is legitimately slow to decode"
    )

    def __init__(self, seconds: float | None) -> None:
        self.left = seconds
        self._active = False
        self.expired = False
        self.enabled = bool(seconds) and hasattr(signal, "setitimer")
        if self.enabled:
            self.enabled = threading.current_thread() is threading.main_thread()

    def _expire(self, signum: int, frame: Any) -> None:
        if self._active:
            self._active = False
            self.expired = True
            raise FileTimeoutError(self._MESSAGE)

    def outcome(self, exc: BaseException) -> BaseException:
        """``exc``, or a :class:`FileTimeoutError` when the budget expired while the failing block ran."""
        if not self.expired or isinstance(exc, FileTimeoutError):
            return exc
        timeout = FileTimeoutError(self._MESSAGE)
        timeout.__cause__ = exc
        return timeout

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the time of the block against the budget, raising FileTimeoutError when it is spent.

        Warnings and the ``pydicom`` logger are silenced inside: library messages quote header values
        (patient names, dates), which must not reach the workers' logs.
        """
        with _quiet():
            if not self.enabled or self.left is None:
                yield
                return
            yield from self._timed()

    def _timed(self) -> Iterator[None]:
        assert self.left is not None
        if self.left <= 0:
            self.expired = True
            raise FileTimeoutError("the time budget of this file (ingest.max_seconds_per_file) is spent")
        start = time.monotonic()
        previous = signal.signal(signal.SIGALRM, self._expire)
        self._active = True
        signal.setitimer(signal.ITIMER_REAL, self.left)
        try:
            yield
        except _NOT_A_FILE_ERROR:
            raise
        except BaseException as exc:
            timeout = self.outcome(exc)
            if timeout is not exc:
                raise timeout from exc
            raise
        finally:
            self._active = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self.left -= time.monotonic() - start
        if self.expired:  # the block swallowed the timeout: its result may be cut short
            raise FileTimeoutError(self._MESSAGE)


def process_file(path: str, content: bytes, ctx: FileContext) -> Iterator[dict[str, Any]]:
    """Yield the output rows of one file, each a dict with ``_kind`` = image, instance or quarantine.

    Never raises for a bad file: every failure becomes one quarantine row naming the stage
    (``read``, ``parse``, ``deid`` or ``decode``) and the exception class. Failures of native codecs
    that raise ``BaseException`` subclasses (pyo3's ``PanicException``) are caught too; only
    ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass. Parse and decode share the time
    budget ``ctx.max_seconds_per_file``. A detached header's rows carry the hash of the header and its
    data file together as ``file_sha256`` (``ParsedFile.content_sha256``); labels still match the
    header file's own hash.
    """
    base = _base_row(path, content, ctx)
    sha = base["file_sha256"]
    file_sha = sha
    if not content:
        yield _quarantine(base, "read", EmptyFileError("file has zero bytes; re-export or remove it"))
        return
    budget = TimeBudget(ctx.max_seconds_per_file)
    recovered: list[str] = []
    try:
        with budget.running():
            parsed = _parse(content, replace(ctx, source_path=path), recovered)
    except _NOT_A_FILE_ERROR:
        raise
    except BaseException as exc:
        yield _quarantine(base, "parse", exc, redact=ctx.deidentify is not None)
        return
    recovered.extend(parsed.recovered)
    if parsed.content_sha256 is not None:
        base = {**base, "file_sha256": parsed.content_sha256}
        sha = parsed.content_sha256
    common = {
        **base,
        "source_format": parsed.source_format,
        "modality": parsed.modality,
        "n_frames": parsed.n_frames,
    }
    yield {
        "_kind": INSTANCE,
        **common,
        **parsed.instance_meta,
        "has_pixels": parsed.has_pixels,
        "recovered": ",".join(recovered) or None,
    }
    if parsed.decode is None:
        return
    file_labels = _labels(path, file_sha, ctx)
    rule_split = None
    if ctx.split_rule is not None:
        from medimg_spark.io.splits import split_of_file

        rule_split = split_of_file(ctx.split_rule, local_path(path), sha, parsed.image_meta)
    written = 0
    frames: Iterator[Any] | None = None
    while True:
        # Only the decoder's own work is guarded: the consumer's time between rows is not this file's,
        # and a GeneratorExit thrown into the ``yield`` below must not be taken for a decode failure.
        try:
            with budget.running():
                if frames is None:
                    frames = iter(parsed.decode())
                frame = next(frames, None)
                if frame is None:
                    break
                pixels, rows, cols, channels, dtype = encode(frame.array)
        except _NOT_A_FILE_ERROR:
            raise
        except BaseException as exc:
            # frame_index: the first frame that failed, or None when nothing could be decoded.
            yield _quarantine(base, "decode", exc, written or None, redact=ctx.deidentify is not None)
            return
        row = {
            "_kind": IMAGE,
            **common,
            **parsed.image_meta,
            **frame.meta,
            "image_id": image_id(sha, frame.index),
            "frame_index": frame.index,
            "rows": rows,
            "cols": cols,
            "channels": channels,
            "dtype": dtype,
            "pixels": pixels,
        }
        if file_labels is not None:
            row["label"], split = file_labels
            if split is not None or "split" not in row:
                row["split"] = split
        if rule_split is not None and row.get("split") is None:
            row["split"] = rule_split
        yield row
        written += 1


class CrashGuard:
    """Marks the file a task is reading, so that the retry of a task whose worker died skips it.

    Before each file the task writes its path to ``<crash_dir>/<task key>`` (atomically); after the
    partition it removes the mark. A worker killed by the OS (out of memory) or by a crash in native
    code leaves the mark behind; Spark retries the task (``spark.task.maxFailures``; ``local[N,F]``),
    and the retry quarantines that one file as :class:`WorkerCrashError` instead of reading it again.
    The mark is found when the retry runs on a host that sees ``crash_dir``: always in local mode,
    and on a cluster when ``--out`` is a shared local mount (else a node-local temporary folder).

    Args:
        crash_dir: folder for the marks (created when missing).
        key: stable across the attempts of one task (run id, stage id, partition id).
    """

    def __init__(self, crash_dir: str, key: str) -> None:
        self.path = os.path.join(crash_dir, key)
        self._dir = crash_dir

    def previous(self) -> str | None:
        """The file an earlier attempt of this task was reading when its worker died, if any."""
        try:
            with open(self.path, encoding="utf-8", errors="surrogateescape") as fh:
                return str(json.load(fh)["path"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def mark(self, path: str) -> None:
        """Record that ``path`` is being read now, by this process (JSON ``{"pid", "path"}``)."""
        os.makedirs(self._dir, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            json.dump({"pid": os.getpid(), "path": path}, fh, ensure_ascii=False)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """The partition is done: remove the mark."""
        with contextlib.suppress(OSError):
            os.remove(self.path)


def read_local(path: str, limit: int) -> bytes:
    """Read a listed local file (a Hadoop path string such as ``file:/a/b c.dcm``), at most ``limit`` bytes.

    Raises:
        FileTooLargeError: the file grew past ``limit`` since it was listed (the listing's own check).
        OSError: the file vanished, is unreadable, or grew while it was read.
    """
    with open(local_path(path), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise FileTooLargeError(
                f"file has {size} bytes, over ingest.max_file_bytes ({limit}), after it was listed; raise "
                "the limit or remove the file"
            )
        data = fh.read(size)  # exactly its size: a read of ``limit`` bytes would reserve them up front
        if fh.read(1):
            raise OSError("file grew while it was read; ingest it again when it is complete")
    return data


def process_files(
    files: Iterator[tuple[str, bytes | None]], ctx: FileContext, guard: CrashGuard | None = None
) -> Iterator[dict[str, Any]]:
    """:func:`process_file` over a task's files, with the crash guard around each one.

    A file given without content (``None``) is read here from the local file system. A file an
    earlier attempt of the task died on becomes one ``WorkerCrashError`` quarantine row. With a
    de-identification hook that pseudonymises paths (:func:`path_hook`), every row's ``source_path``
    is the path's keyed pseudonym, quarantine messages hold no path, and instance rows carry
    ``_path_phi`` (path components equal to a header PHI value of a DICOM file).
    """
    crashed = guard.previous() if guard is not None else None
    paths = path_hook(ctx)
    for path, maybe_content in files:
        if paths is None:
            yield from _file_rows(path, maybe_content, ctx, guard, crashed, path)
            continue
        pseudonym = paths.begin_file(path)
        for row in _file_rows(path, maybe_content, ctx, guard, crashed, pseudonym):
            yield _private_row(row, path, pseudonym, paths)
    if guard is not None:
        guard.clear()


def path_hook(ctx: FileContext) -> Any:
    """The de-identification hook when it pseudonymises paths (``begin_file``), else None."""
    hook = ctx.deidentify
    return hook if hook is not None and hasattr(hook, "begin_file") else None


def _private_row(row: dict[str, Any], path: str, pseudonym: str, paths: Any) -> dict[str, Any]:
    """A de-identified row: the path pseudonym as ``source_path``, no path in a message, the path PHI count,
    and no label that is a folder name equal to a header PHI value (``label_from_parent_dir``)."""
    row["source_path"] = pseudonym
    if row["_kind"] == QUARANTINE and row.get("error_message"):
        row["error_message"] = paths.scrub(row["error_message"], path)[:2000]
    elif row["_kind"] == INSTANCE:
        row["_path_phi"] = paths.path_phi
    elif row["_kind"] == IMAGE and row.get("label") is not None and row["label"] in paths.path_phi_parts:
        row["label"] = None  # label_from_parent_dir took a folder named after the patient: not a label
    return row


def _file_rows(
    path: str,
    maybe_content: bytes | None,
    ctx: FileContext,
    guard: CrashGuard | None,
    crashed: str | None,
    mark: str,
) -> Iterator[dict[str, Any]]:
    """The rows of one file of :func:`process_files` (read here when given without content).

    The crash guard marks the file as ``mark``: its path, or with de-identification its pseudonym
    (a crash record never holds an original path then).
    """
    if maybe_content is None:  # a listed local file: read it here, in the task
        try:
            content = read_local(path, ctx.max_file_bytes)
        except (OSError, MemoryError, FileTooLargeError) as exc:
            yield _quarantine(_base_row(path, None, ctx), "read", exc)
            return
    else:
        content = maybe_content
    if crashed is not None and mark == crashed:
        base = _base_row(path, content, ctx)
        crash = WorkerCrashError(
            "the Python worker died while reading this file (killed by the OS, e.g. out of memory, or a "
            "crash in a native codec); lower ingest.max_decoded_bytes or raise the worker memory"
        )
        yield _quarantine(base, "decode", crash)
        return
    if guard is not None:
        guard.mark(mark)
    yield from process_file(path, content, ctx)
