"""Detached headers (NRRD ``.nhdr``, MetaImage ``.mhd``): reading the data file they name, and the
one outcome of that data file when it is itself an ingest input.

A detached header names its voxel data file relative to its own folder. Ingest reads that file
through the same local access it uses for listed files (:func:`medimg_spark.storage.local_path`),
only when it lies in the header's folder or below (no absolute paths, no ``..`` out of the folder,
no symbolic link leading elsewhere, a regular file within ``ingest.max_file_bytes``): a header must
not make ingest read arbitrary files of the worker. A header given as a Hadoop URI (``hdfs:``,
``s3a:``) is quarantined (:class:`DetachedDataError`): its tasks receive the listed file's bytes
only, not its folder; convert such pairs to an attached ``.nrrd``/``.mha`` first.

The data file, when it is listed as an input too, is quarantined at stage ``parse`` as
:class:`DataOfDetachedHeaderError` (its content is no supported format, and a detached header of the
same folder names it): the voxels are ingested once, through the header, never from the raw file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from dataclasses import dataclass

from medimg_spark.errors import FileTooLargeError, IngestFileError
from medimg_spark.storage import local_path, split_uri


class DetachedDataError(IngestFileError):
    """The data file a detached header names cannot be read (missing, outside the header's folder,
    not a regular file, over the size limit, or next to a Hadoop-URI header)."""


class DataOfDetachedHeaderError(IngestFileError):
    """This file is the voxel data of a detached header (``.nhdr``/``.mhd``) of the same folder: it is
    ingested through that header, not on its own."""


#: File-name endings of the headers :func:`header_naming` looks at (a cost filter only: each
#: candidate's content is checked).
HEADER_SUFFIXES = (".nhdr", ".nrrd", ".mhd", ".mha")
#: Bytes of a candidate header read by :func:`header_naming`.
HEADER_PROBE_BYTES = 64 << 10
#: Candidate headers examined per data file (same stem first), bounding the cost in huge folders.
MAX_CANDIDATES = 64
#: Folders with more entries than this are not scanned for headers of another stem.
MAX_SCAN = 2048


def header_dir(header_path: str | None, what: str) -> str:
    """The local folder of a detached header given as a Hadoop path string.

    Raises:
        DetachedDataError: the header is not a local file (a Hadoop URI, or no path known).
    """
    if not header_path:
        raise DetachedDataError(
            f"{what} names a detached data file but the header's path is unknown; ingest the header as a "
            "file (its data file must be next to it)"
        )
    scheme = split_uri(header_path)[0]
    local = local_path(header_path)
    if scheme not in ("", "file") or "://" in local:
        raise DetachedDataError(
            f"{what} names a detached data file, which ingest cannot read next to a {scheme}: URI (its tasks "
            "receive only the listed file's bytes); convert the pair to an attached .nrrd/.mha (e.g. "
            "SimpleITK.WriteImage) or ingest it from a local mount"
        )
    return posixpath.dirname(local)


def resolve_data_file(header_path: str | None, name: str, what: str) -> str:
    """The local path of the data file ``name`` of the detached header at ``header_path``.

    Raises:
        DetachedDataError: no local header path, an absolute or escaping name, a symbolic link out of
            the header's folder, or a missing data file.
    """
    folder = header_dir(header_path, what)
    fix = "put the data file in the header's folder and name it relatively (e.g. `vol.raw`)"
    if not name or "\x00" in name:
        raise DetachedDataError(f"{what} names an empty data file; {fix}")
    if posixpath.isabs(name) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise DetachedDataError(
            f"{what} names the absolute data file {name!r}; ingest reads a detached header's data only from "
            f"its folder or below: {fix}"
        )
    candidate = posixpath.normpath(posixpath.join(folder, name))
    root = os.path.realpath(folder)
    real = os.path.realpath(candidate)
    if not real.startswith(root.rstrip("/") + "/"):
        raise DetachedDataError(
            f"{what} names the data file {name!r}, which lies outside the header's folder; {fix}"
        )
    if not os.path.lexists(candidate):
        raise DetachedDataError(
            f"{what} names the data file {name!r}, which is missing next to the header; copy it there "
            "(a detached header and its data travel together)"
        )
    return candidate


def read_data_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of a detached data file (a regular file of at most ``limit`` bytes).

    Raises:
        DetachedDataError: not a regular file, or unreadable.
        FileTooLargeError: over ``limit`` (``ingest.max_file_bytes``).
    """
    name = posixpath.basename(path)
    try:
        with open(path, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise DetachedDataError(f"{what}: the data file {name!r} is not a regular file")
            if info.st_size > limit:
                raise FileTooLargeError(
                    f"{what}: the data file {name!r} is {info.st_size} bytes, over ingest.max_file_bytes = "
                    f"{limit}; raise the limit or split the volume"
                )
            return fh.read(info.st_size)
    except OSError as err:
        raise DetachedDataError(f"{what}: the data file {name!r} cannot be read ({err.strerror})") from None


def combined_sha256(header: bytes, data: bytes | memoryview) -> str:
    """The content identity of a detached pair: sha256 of ``"<header sha256>:<data sha256>"``.

    Used as ``file_sha256`` of the header's rows, so that two identical headers naming different data
    are different content, and a header whose data file changed is new content.
    """
    parts = f"{hashlib.sha256(header).hexdigest()}:{hashlib.sha256(data).hexdigest()}"
    return hashlib.sha256(parts.encode()).hexdigest()


@dataclass(frozen=True)
class DataRegion:
    """Where a volume file's voxels are: ``region`` (the attached bytes after the header, or the
    detached data file's bytes), ``sha`` (the content identity: the file's sha256, or the pair's
    :func:`combined_sha256`) and ``identity`` (the pair's hash to use as ``file_sha256``, None when
    attached)."""

    region: bytes | memoryview
    sha: str
    identity: str | None


def data_region(
    data: bytes, offset: int, data_file: str | None, header_path: str | None, max_file_bytes: int, what: str
) -> DataRegion:
    """The voxel bytes of a header ``data`` whose attached data start at ``offset``, or whose data are in
    the detached ``data_file`` next to ``header_path`` (see :func:`resolve_data_file`).

    Raises:
        DetachedDataError, FileTooLargeError: the detached data file cannot be read.
    """
    if data_file is None:
        return DataRegion(memoryview(data)[offset:], hashlib.sha256(data).hexdigest(), None)
    path = resolve_data_file(header_path, data_file, what)
    region = read_data_file(path, max_file_bytes, what)
    sha = combined_sha256(data, region)
    return DataRegion(region, sha, sha)


def _named_data_file(head: bytes) -> str | None:
    """The data file a header's first bytes name (NRRD ``data file:``, MetaImage ``ElementDataFile``)."""
    text = head.decode("latin-1")
    if head.startswith(b"NRRD000"):
        m = re.search(r"^data ?file:=?[ \t]*(.*?)[ \t]*\r?$", text, re.MULTILINE)
        return m.group(1) if m else None
    m = re.search(r"^[ \t]*ElementDataFile[ \t]*=[ \t]*(.*?)[ \t]*\r?$", text, re.MULTILINE)
    if m and m.group(1).upper() != "LOCAL":
        return m.group(1)
    return None


def _candidates(folder: str, base: str) -> list[str]:
    """Header names to look at for the data file ``base``: the same stem's, then (in a folder of at most
    :data:`MAX_SCAN` entries) every other header-like name, at most :data:`MAX_CANDIDATES`."""
    stem = base.split(".", 1)[0]
    same = [
        stem + suffix for suffix in HEADER_SUFFIXES if os.path.isfile(posixpath.join(folder, stem + suffix))
    ]
    others: list[str] = []
    try:
        with os.scandir(folder or ".") as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_SCAN:
                    others = []  # a huge folder: only the same-stem headers (cost stays per file)
                    break
                if (
                    entry.name.lower().endswith(HEADER_SUFFIXES)
                    and entry.name not in same
                    and entry.name != base
                ):
                    others.append(entry.name)
    except OSError:
        pass
    return (same + sorted(others))[:MAX_CANDIDATES]


def header_naming(path: str | None) -> str | None:
    """The detached header of ``path``'s folder that names ``path`` as its data file, if any.

    Looks at the headers of the same stem (``vol.nhdr`` for ``vol.raw.gz``), and in folders of at most
    :data:`MAX_SCAN` entries at every file ending in :data:`HEADER_SUFFIXES`, reading
    :data:`HEADER_PROBE_BYTES` of each. Only local paths. Called only for content of no supported
    format, so the listing cost never touches readable files.
    """
    if not path or split_uri(path)[0] not in ("", "file"):
        return None
    local = local_path(path)
    folder, base = posixpath.split(local)
    target = posixpath.normpath(local)
    for name in _candidates(folder, base):
        try:
            with open(posixpath.join(folder, name), "rb") as fh:
                head = fh.read(HEADER_PROBE_BYTES)
        except OSError:
            continue
        named = _named_data_file(head)
        if (
            named
            and not posixpath.isabs(named)
            and posixpath.normpath(posixpath.join(folder, named)) == target
        ):
            return name
    return None
