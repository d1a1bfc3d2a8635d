"""List ingest inputs on the driver: every regular file once, and what Spark's reader may be given.

Spark's ``binaryFile`` source lists folders itself, but on a local file system it follows directory
symlinks without cycle detection (a cycle is walked until the path is too long, each file read
once per level), cannot name files that are not UTF-8, and fails the whole job on a file it
cannot open. :func:`list_local` walks local inputs first and hands Spark only *clean* subtrees
(folders whose whole subtree has none of these problems) as folders, and the readable files of
other folders one by one; everything it found but cannot hand over is returned as a
:class:`Problem` so that ingest can quarantine it.

Symlinks: a symlink to a file is read (at the link's path). A symlink to a folder is followed
unless that folder was already walked (an ancestor, i.e. a cycle, or a folder also reached through
its real path or another link); real folders are walked before any link, so a folder is listed
under its own path whenever it lies inside an input. Skipped links are counted
(:attr:`Listing.symlinks_skipped`).

Paths are Hadoop path strings, as in the ``path`` column of ``binaryFile``: ``file:/a/b c.dcm``,
never URI-encoded (``%20`` in a name stays ``%20``). :func:`hadoop_path` turns URIs (Spark's
``inputFiles()``, streaming source logs) into that form, decoding exactly once.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

#: Problem kinds (ingest maps them to quarantine error classes and messages).
NAME_ENCODING = "name-encoding"
BROKEN_SYMLINK = "broken-symlink"
NOT_REGULAR = "not-regular"
NO_PERMISSION = "permission"
UNLISTABLE_DIR = "unlistable-dir"


@dataclass(frozen=True)
class Problem:
    """A file (or unlistable folder) that Spark's reader must not be given.

    Attributes:
        path: Hadoop path string; bytes that are not UTF-8 are written as ``\\xNN`` escapes.
        kind: one of the problem kinds of this module.
        size: size in bytes, when known.
    """

    path: str
    kind: str
    size: int | None = None


@dataclass
class Listing:
    """Result of :func:`list_local`.

    Attributes:
        files: ``{path: size}`` of every regular file Spark may read (empty ones included).
        problems: entries found that Spark must not be given.
        roots: folders (whole subtrees) and single files to pass to ``binaryFile``.
        skipped: folder symlinks not followed (cycles and folders reached twice), as Hadoop path strings.
    """

    files: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def symlinks_skipped(self) -> int:
        """How many folder symlinks (or folders met twice) were not followed."""
        return len(self.skipped)


def is_hidden(name: str) -> bool:
    """Spark's rule for names its file listing skips (``HadoopFSUtils.shouldFilterOutPathName``)."""
    exclude = (
        (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")
    )
    include = name.startswith(("_common_metadata", "_metadata"))
    return exclude and not include


def hadoop_path(uri: str) -> str:
    """A URI (``file:///a/b%20c``) as a Hadoop path string (``file:/a/b c``): decoded exactly once.

    This is ``new Path(new URI(uri)).toString()``; strings without a scheme are returned unchanged.
    """
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    authority = f"//{parts.netloc}" if parts.netloc else ""
    return f"{parts.scheme}:{authority}{unquote(parts.path)}"


def display_path(path: str) -> str:
    """A local path as text: bytes that are not UTF-8 (surrogate escapes) become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _uri(path: str) -> str:
    return f"file:{path}"


class _Walker:
    def __init__(self) -> None:
        self.out = Listing()
        self.visited: set[tuple[int, int]] = set()
        self.links: list[str] = []  # folder symlinks met, followed after every real folder

    def skip(self, path: str) -> None:
        self.out.skipped.append(_uri(display_path(path)))

    def problem(self, path: str, kind: str, size: int | None = None) -> None:
        self.out.problems.append(Problem(_uri(display_path(path)), kind, size))

    def file(self, path: str, st: os.stat_result | None, encodable: bool) -> bool:
        """Record one file; True when it can be handed to Spark."""
        if st is None:
            if os.path.islink(path):
                self.problem(path, BROKEN_SYMLINK)
            return False  # else it vanished since the folder was listed
        if not stat.S_ISREG(st.st_mode):
            self.problem(path, NOT_REGULAR)
            return False
        if not encodable:
            self.problem(path, NAME_ENCODING, st.st_size)
            return False
        if not os.access(path, os.R_OK):
            self.problem(path, NO_PERMISSION, st.st_size)
            return False
        self.out.files[_uri(path)] = st.st_size
        return True

    def folder(self, path: str, st: os.stat_result, encodable: bool) -> bool:
        """Walk one folder (not yet visited); True when its whole subtree can be handed to Spark."""
        self.visited.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            self.problem(path, UNLISTABLE_DIR)
            return False
        clean = encodable
        loose: list[str] = []  # this folder's files that Spark may read
        parts: list[str] = []  # this folder's clean subfolders
        for entry in entries:
            if is_hidden(entry.name):
                continue
            child_ok = encodable and _utf8(entry.name)
            try:
                child = os.stat(entry.path)
            except OSError:
                child = None
            if child is not None and stat.S_ISDIR(child.st_mode):
                if entry.is_symlink():
                    clean = False  # Spark would follow it: the link is decided after all real folders
                    self.links.append(entry.path)
                elif (child.st_dev, child.st_ino) in self.visited:
                    clean = False  # a bind mount or hard-linked folder met twice
                    self.skip(entry.path)
                elif self.folder(entry.path, child, child_ok):
                    parts.append(entry.path)
                else:
                    clean = False
            elif self.file(entry.path, child, child_ok):
                loose.append(entry.path)
            else:
                clean = False
        if not clean:
            self.out.roots.extend(_uri(p) for p in parts + loose)
        return clean

    def top(self, path: str) -> None:
        """One input: a file or a folder."""
        try:
            st = os.stat(path)
        except OSError:
            st = None
        ok = _utf8(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self.visited:
                self.skip(path)
            elif self.folder(path, st, ok):
                self.out.roots.append(_uri(path))
        elif self.file(path, st, ok):
            self.out.roots.append(_uri(path))

    def follow_links(self) -> None:
        while self.links:
            link = self.links.pop(0)
            try:
                st = os.stat(link)
            except OSError:
                continue
            target = os.path.realpath(link)
            where = os.path.realpath(os.path.dirname(link))
            if (st.st_dev, st.st_ino) in self.visited or (where + "/").startswith(target.rstrip("/") + "/"):
                self.skip(link)  # a folder walked already, or an ancestor (a cycle)
            elif self.folder(link, st, _utf8(link)):
                self.out.roots.append(_uri(link))


def list_local(paths: list[str]) -> Listing:
    """Walk local files and folders (absolute paths) recursively, as described in the module docstring.

    Names Spark skips (starting with ``.`` or ``_``) are skipped here too.
    """
    walker = _Walker()
    for p in paths:
        walker.top(p)
    walker.follow_links()
    out = walker.out
    out.roots = sorted(set(out.roots))
    return out
