"""Deterministic split assignment at ingest (``ingest.split``): a pure function of a file's group key.

No Spark: :func:`medimg_spark.io.files.process_file` calls :func:`split_of_file` once per file, so all
frames of a file (and, ``by: series``/``study``, all files of a series/study) share one split.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from typing import Any

from medimg_spark.config import SplitRule

__all__ = ["SplitRule", "group_key", "hash_split", "split_from_path", "split_of_file"]


def hash_split(rule: SplitRule, key: str) -> str:
    """The split of group ``key``: SHA-256 of (seed, key) as a number in [0, 1) over the cumulative fractions."""
    digest = hashlib.sha256(f"{rule.seed}\0{key}".encode("utf-8", "surrogateescape")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    acc = 0.0
    names = list(rule.fractions)
    for name in names:
        acc += rule.fractions[name]
        if u < acc:
            return name
    return names[-1]  # rounding: fractions sum to 1 within 1e-6


def split_from_path(rule: SplitRule, local_path: str) -> str | None:
    """The nearest folder of ``local_path`` named like a split of ``rule`` (case-insensitive), else None."""
    by_name = {n.casefold(): n for n in rule.fractions}
    folder = posixpath.dirname(local_path)
    while folder and folder != posixpath.dirname(folder):
        found = by_name.get(posixpath.basename(folder).casefold())
        if found is not None:
            return found
        folder = posixpath.dirname(folder)
    return None


def group_key(rule: SplitRule, local_path: str, file_sha256: str, meta: Mapping[str, Any]) -> str:
    """The key whose hash decides the split: file hash, folder name, or series/study UID (see :class:`SplitRule`)."""
    if rule.by == "parent":
        return "parent:" + posixpath.basename(posixpath.dirname(local_path))
    if rule.by in ("series", "study"):
        uid = meta.get(f"{rule.by}_instance_uid")
        if uid:
            return f"{rule.by}:{uid}"
    return "file:" + file_sha256


def split_of_file(
    rule: SplitRule | None, local_path: str, file_sha256: str, meta: Mapping[str, Any]
) -> str | None:
    """The split ``rule`` gives the frames of one file (None: no rule, or ``from_path`` found no split folder).

    Args:
        rule: ``ingest.split``.
        local_path: the file's local path (folder names are read from it).
        file_sha256: SHA-256 of the file's bytes.
        meta: the file's image metadata (``series_instance_uid``, ``study_instance_uid``).
    """
    if rule is None:
        return None
    if rule.by == "from_path":
        return split_from_path(rule, local_path)
    return hash_split(rule, group_key(rule, local_path, file_sha256, meta))
