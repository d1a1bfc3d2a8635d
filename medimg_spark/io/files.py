"""Turn one file's bytes into rows of the ``images``, ``instances`` and ``quarantine`` tables.

This is the per-file core of ingest, a plain Python function (no Spark) so it can be tested on
its own; :mod:`medimg_spark.io.ingest` runs it inside executors.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from medimg_spark.errors import EmptyFileError, UnsupportedFormatError
from medimg_spark.io import detect
from medimg_spark.io.model import ParsedFile
from medimg_spark.io.pixels import encode

IMAGE = "image"
INSTANCE = "instance"
QUARANTINE = "quarantine"


@dataclass
class FileContext:
    """Everything the per-file function needs; pickled once per task.

    Attributes:
        run_id: the ingest run id written to every row.
        default_modality: modality of non-DICOM files.
        max_decompressed_bytes: limit for gzip-wrapped files.
        labels_by_path: ``{local path: (label, split)}`` from ``--labels``.
        labels_by_sha: ``{file sha256: (label, split)}`` from ``--labels``.
        label_from_parent_dir: take the label from the parent folder's name.
        deidentify: applied to every DICOM dataset before metadata is extracted.
    """

    run_id: str
    default_modality: str = "OT"
    max_decompressed_bytes: int = 1 << 30
    labels_by_path: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    labels_by_sha: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    label_from_parent_dir: bool = False
    deidentify: Callable[[Any], Any] | None = None


def local_path(uri: str) -> str:
    """``file:/a/b%20c`` → ``/a/b c``; other schemes are returned unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return posixpath.normpath(unquote(parsed.path))
    return uri


def image_id(file_sha256: str, frame_index: int) -> str:
    """Stable frame id: sha256 of the file's sha256 and the frame index."""
    return hashlib.sha256(f"{file_sha256}:{frame_index}".encode()).hexdigest()


def _parse(data: bytes, ctx: FileContext, recovered: list[str]) -> ParsedFile:
    fmt = detect.detect_format(data)
    if fmt == detect.GZIP:
        data = detect.gunzip(data, ctx.max_decompressed_bytes)
        recovered.append("gunzip")
        fmt = detect.detect_format(data)
        if fmt == detect.GZIP:
            raise UnsupportedFormatError("nested gzip streams are not supported; decompress the file first")
    if fmt is None:
        raise UnsupportedFormatError(
            "content matches no supported format (DICOM, PNG, JPEG, TIFF, NIfTI-1/2, MedMNIST npz)"
        )
    if fmt == detect.ZIP:
        raise UnsupportedFormatError("zip archive whose members are not .npy arrays; extract it first")
    if fmt == detect.DICOM:
        from medimg_spark.io.dicom import parse_dicom

        return parse_dicom(data, ctx.deidentify)
    if fmt in (detect.PNG, detect.JPEG, detect.TIFF):
        from medimg_spark.io.raster import parse_raster

        return parse_raster(data, fmt, ctx.default_modality)
    if fmt in (detect.NIFTI1, detect.NIFTI2):
        from medimg_spark.io.nifti import parse_nifti

        return parse_nifti(data, fmt, ctx.default_modality)
    from medimg_spark.io.npz import parse_npz

    return parse_npz(data, ctx.default_modality)


def _quarantine(
    base: dict[str, Any], stage: str, exc: BaseException, frame_index: int | None = None, redact: bool = False
) -> dict:
    stage = getattr(exc, "medimg_stage", stage)
    text = str(exc).strip()
    message = " | ".join(line.strip() for line in text.splitlines() if line.strip()) if text else repr(exc)
    return {
        "_kind": QUARANTINE,
        **base,
        "frame_index": frame_index,
        "stage": stage,
        "step": None,
        "error_class": type(exc).__name__,
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


def process_file(path: str, content: bytes, ctx: FileContext) -> Iterator[dict[str, Any]]:
    """Yield the output rows of one file, each a dict with ``_kind`` = image, instance or quarantine.

    Never raises for a bad file: every failure becomes one quarantine row naming the stage
    (``read``, ``parse`` or ``decode``) and the exception class.
    """
    sha = hashlib.sha256(content).hexdigest()
    base: dict[str, Any] = {
        "source_path": path,
        "file_sha256": sha,
        "size_bytes": len(content),
        "ingest_run_id": ctx.run_id,
    }
    if not content:
        yield _quarantine(base, "read", EmptyFileError("file has zero bytes; re-export or remove it"))
        return
    recovered: list[str] = []
    try:
        parsed = _parse(content, ctx, recovered)
    except Exception as exc:
        yield _quarantine(base, "parse", exc, redact=ctx.deidentify is not None)
        return
    recovered.extend(parsed.recovered)
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
    file_labels = _labels(path, sha, ctx)
    written = 0
    try:
        for frame in parsed.decode():
            pixels, rows, cols, channels, dtype = encode(frame.array)
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
            yield row
            written += 1
    except Exception as exc:
        # frame_index: the first frame that failed, or None when nothing could be decoded.
        yield _quarantine(base, "decode", exc, written or None, redact=ctx.deidentify is not None)
