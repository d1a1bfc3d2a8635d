"""The in-memory result of parsing one file, shared by every format reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    """One 2-D frame: ``array`` is (rows, cols) or (rows, cols, channels); ``meta`` overrides per frame."""

    index: int
    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParsedFile:
    """A file whose header was read.

    Attributes:
        source_format: detected format (``dicom``, ``png``, ``nifti1``...).
        modality: DICOM modality, or the configured default for non-DICOM files.
        has_pixels: whether the object carries image data.
        n_frames: number of 2-D frames the pixels hold (0 when ``has_pixels`` is false).
        image_meta: column values shared by every frame of the ``images`` table.
        instance_meta: column values of the ``instances`` table (UIDs, SOP class, header JSON...).
        recovered: what was repaired to read the file (e.g. ``force``, ``inferred_transfer_syntax``).
        decode: a callable producing the frames lazily; it raises when the pixels cannot be decoded.
        content_sha256: the content identity when the image is read from more than this file (a
            detached header and its data file, see :func:`medimg_spark.io.detached.combined_sha256`):
            the rows' ``file_sha256`` (and so their ``image_id`` and deduplication); None: the file's hash.
    """

    source_format: str
    modality: str
    has_pixels: bool
    n_frames: int
    image_meta: dict[str, Any] = field(default_factory=dict)
    instance_meta: dict[str, Any] = field(default_factory=dict)
    recovered: list[str] = field(default_factory=list)
    decode: Callable[[], Iterator[Frame]] | None = None
    content_sha256: str | None = None
