"""One storage layer for everything the stages read and write under ``--out``.

Every stage names its files as strings: a local path (``demo-out``, ``/data/lake``), a ``file:`` URI
or a URI of any Hadoop file system (``hdfs://nn/lake``, ``s3a://bucket/lake``, ``viewfs://cluster/lake``).
:func:`join` builds paths without ever turning a URI into a local path (``pathlib`` would make
``s3a://bucket/lake`` the relative path ``s3a:/bucket/lake``), and :class:`Storage` reaches them all
through the JVM's Hadoop ``FileSystem`` from the driver, the same file systems Spark's readers and
writers use. Local paths go through Hadoop's raw local file system (no ``.crc`` sidecar files).

Libraries that need local files (joblib, matplotlib) use :meth:`Storage.local_copy` (a stored file or
folder fetched to a local temporary folder) and :meth:`Storage.staged_file` /
:meth:`Storage.staged_dir` (written locally, then uploaded). Writes of whole files are atomic: a
hidden temporary sibling, then a rename, so a reader never sees half a file.

A :class:`Storage` built without a SparkSession (``Storage(None)``, or :func:`get_storage` when no
session is active) reaches local paths only, with plain Python file calls: for checks that run
before Spark starts. Example::

    store = get_storage(spark)
    metrics = join(out, "metrics", "eval_lr_val.json")     # s3a://b/lake/metrics/eval_lr_val.json
    store.write_json(metrics, {"accuracy": 0.9})
    with store.local_copy(join(out, "models", "lr", "model.joblib")) as f:
        estimator = joblib.load(f)
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob as pyglob
import json
import os
import posixpath
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from medimg_spark.errors import MedimgError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "FileInfo",
    "Storage",
    "StorageError",
    "StorageExistsError",
    "StorageFormatError",
    "StorageIOError",
    "StorageNotADirectoryError",
    "StorageNotFoundError",
    "StoragePathError",
    "basename",
    "get_storage",
    "is_local",
    "join",
    "local_path",
    "parent",
    "split_uri",
]

#: Size of one write through the JVM gateway.
_CHUNK = 4 << 20
#: Hadoop's convention: names starting with these are hidden from Spark's readers.
HIDDEN_PREFIXES = ("_", ".")


# ----------------------------------------------------------------------------- errors


class StorageError(MedimgError):
    """A file or folder under a storage path could not be reached; the message names the path and the fix."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The path does not exist."""


class StorageExistsError(StorageError, FileExistsError):
    """The destination exists and the call does not overwrite it."""


class StorageNotADirectoryError(StorageError, NotADirectoryError):
    """A folder was expected and the path is a file."""


class StoragePathError(StorageError, ValueError):
    """The path string is invalid for the call (an absolute part in :func:`join`, a URI without Spark)."""


class StorageFormatError(StorageError, ValueError):
    """The file exists but its content is not what was asked for (not UTF-8, not JSON)."""


class StorageIOError(StorageError, OSError):
    """The file system refused or failed the call (permission, unknown host, missing connector...)."""


# ----------------------------------------------------------------------------- paths

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):(?://([^/]*))?(.*)$", re.S)


def split_uri(path: str | os.PathLike[str]) -> tuple[str, str | None, str]:
    """``(scheme, authority, path)`` of a storage path; ``("", None, path)`` for a plain local path.

    A scheme needs two or more characters and must be followed by ``/`` (``s3a://b/x``, ``file:/x``,
    ``viewfs:/x``), so a local name such as ``run:1/out`` stays a local path. ``file:`` always is a URI.

    Examples:
        >>> split_uri("s3a://bucket/lake")
        ('s3a', 'bucket', '/lake')
        >>> split_uri("out/run")
        ('', None, 'out/run')
    """
    text = os.fspath(path)
    m = _URI.match(text)
    if m is None:
        return "", None, text
    scheme, authority, rest = m.group(1), m.group(2), m.group(3)
    if authority is None and not rest.startswith("/") and scheme.lower() != "file":
        return "", None, text
    return scheme.lower(), authority, rest


def is_local(path: str | os.PathLike[str]) -> bool:
    """True for a plain path or a ``file:`` URI on this machine (empty host or ``localhost``)."""
    scheme, authority, _ = split_uri(path)
    return scheme == "" or (scheme == "file" and authority in (None, "", "localhost"))


def local_path(path: str | os.PathLike[str]) -> str:
    """The local file of a local storage path: ``file:/a/b c.dcm`` → ``/a/b c.dcm``; URIs unchanged.

    Hadoop path strings are not URI-encoded, so nothing is percent-decoded (``file:/a/x%20y`` is the
    file ``/a/x%20y``).
    """
    text = os.fspath(path)
    scheme, authority, rest = split_uri(text)
    if scheme == "":
        return posixpath.normpath(text)
    if scheme == "file" and authority in (None, "", "localhost"):
        return (
            posixpath.normpath("/" + rest.lstrip("/")) if authority is not None else posixpath.normpath(rest)
        )
    return text


def spark_path(path: str | os.PathLike[str]) -> str:
    """``path`` as Spark should be given it: URIs (``file:`` ones too) as they are, plain local paths
    absolute with symlinks resolved (executors do not share the driver's working directory)."""
    text = os.fspath(path)
    return os.path.realpath(text) if split_uri(text)[0] == "" else text


def _parts(parts: tuple[str | os.PathLike[str], ...], base: str) -> list[str]:
    out: list[str] = []
    for part in parts:
        text = os.fspath(part)
        if text.startswith("/") or split_uri(text)[0]:
            raise StoragePathError(
                f"cannot join {text!r} to {base!r}: it is absolute; pass a path relative to {base!r}"
            )
        out += [seg for seg in text.split("/") if seg not in ("", ".")]
    return out


def join(base: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> str:
    """Append relative ``parts`` to ``base``, keeping a URI a URI and a local path a local path.

    ``join("s3a://b/lake", "features")`` is ``s3a://b/lake/features``; ``join("out", "models/lr")``
    is ``out/models/lr`` (local paths are joined as :class:`pathlib.PurePosixPath` joins them).

    Raises:
        StoragePathError: ``base`` is empty or a part is absolute (``/x`` or a URI).
    """
    text = os.fspath(base)
    if not text:
        raise StoragePathError("cannot join to an empty path; pass the output directory (e.g. --out DIR)")
    segments = _parts(parts, text)
    scheme, _, rest = split_uri(text)
    if scheme == "":
        return str(PurePosixPath(text, *segments))
    head = text[: len(text) - len(rest)]
    path = rest.rstrip("/") if rest.strip("/") else ""
    return head + path + "".join("/" + s for s in segments) if segments or path else head + rest


def parent(path: str | os.PathLike[str]) -> str:
    """The folder holding ``path`` (URI-aware): ``s3a://b/lake/x.json`` → ``s3a://b/lake``."""
    text = os.fspath(path)
    scheme, _, rest = split_uri(text)
    if scheme == "":
        return str(PurePosixPath(text).parent)
    head = text[: len(text) - len(rest)]
    stripped = rest.rstrip("/")
    return head + (posixpath.dirname(stripped) if stripped else rest)


def basename(path: str | os.PathLike[str]) -> str:
    """The last name of ``path`` (URI-aware): ``s3a://b/lake/models/lr`` → ``lr``."""
    return posixpath.basename(split_uri(path)[2].rstrip("/"))


def _hidden(name: str) -> bool:
    return name.startswith(HIDDEN_PREFIXES)


# ----------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class FileInfo:
    """One listed file or folder.

    Attributes:
        path: the path, spelled like the listed folder (:func:`join` of the folder and ``rel``).
        rel: the path relative to the listed folder (``a/b.parquet`` in a recursive listing).
        is_dir: a folder.
        size: bytes (0 for folders).
        modified: modification time, seconds since the epoch.
    """

    path: str
    rel: str
    is_dir: bool
    size: int
    modified: float

    @property
    def name(self) -> str:
        """The last name of the path."""
        return posixpath.basename(self.rel)


#: ``(name or relative path, is_dir, size, modified)`` as a backend returns it.
_Entry = tuple[str, bool, int, float]


class _Backend(Protocol):
    def stat(self, path: str) -> _Entry | None: ...
    def children(self, path: str) -> list[_Entry]: ...
    def files_under(self, path: str) -> Iterator[_Entry]: ...
    def glob(self, pattern: str) -> list[str]: ...
    def read(self, path: str) -> bytes: ...
    def write(self, path: str, data: bytes) -> None: ...
    def rename(self, src: str, dst: str) -> bool: ...
    def delete(self, path: str, recursive: bool) -> bool: ...
    def mkdirs(self, path: str) -> None: ...
    def copy_from_local(self, local: str, dst: str) -> None: ...
    def copy_to_local(self, src: str, local: str) -> None: ...


def _java_error(err: BaseException) -> Any:
    """The Java throwable behind a py4j or pyspark exception (None for other errors)."""
    return getattr(err, "java_exception", None) or getattr(err, "_origin", None)


def _java_chain(throwable: Any) -> list[tuple[str, str]]:
    """``(class name, message)`` of a Java throwable and its causes."""
    chain: list[tuple[str, str]] = []
    seen = 0
    while throwable is not None and seen < 8:
        try:
            chain.append((str(throwable.getClass().getName()), str(throwable.getMessage() or "")))
            throwable = throwable.getCause()
        except Exception:  # the gateway is gone: keep what we have
            break
        seen += 1
    return chain


_FIX = "check the path and the Hadoop settings of the Spark session (spark.hadoop.* in the YAML config)"


def _translate(err: BaseException, action: str, path: str) -> StorageError:
    """A :class:`StorageError` naming ``path`` and the fix, for an error raised by a Hadoop call."""
    chain = _java_chain(_java_error(err))
    names = " ".join(c for c, _ in chain)
    own = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = " ".join(m for _, m in chain) if chain else own
    first = f"{chain[0][0].rsplit('.', 1)[-1]}: {chain[0][1]}" if chain else own
    scheme = split_uri(path)[0] or "file"
    if "FileNotFoundException" in names:
        return StorageNotFoundError(f"cannot {action} {path}: it does not exist; {_FIX}")
    if "FileAlreadyExistsException" in names:
        return StorageExistsError(
            f"cannot {action} {path}: it exists already; delete it or choose another path"
        )
    if "AccessControlException" in names or "AccessDeniedException" in names or "Permission denied" in text:
        return StorageIOError(
            f"cannot {action} {path}: permission denied ({first}); grant the Spark user access to it"
        )
    if (
        "UnsupportedFileSystemException" in names
        or "No FileSystem for scheme" in text
        or ("ClassNotFoundException" in names and "FileSystem" in text)
    ):
        return StorageIOError(
            f"cannot {action} {path}: Spark has no Hadoop file system for scheme {scheme!r} ({first}); add "
            "its connector to the session (e.g. spark.jars.packages org.apache.hadoop:hadoop-aws:<hadoop "
            "version> for s3a) or use a local path"
        )
    if "UnknownHostException" in names or "UnknownHostException" in text:
        return StorageIOError(f"cannot {action} {path}: unknown host ({first}); fix the host name in the URI")
    return StorageIOError(f"cannot {action} {path}: {first}; {_FIX}")


_JAVA_CACHE: dict[int, tuple[Any, Any, Any, Any, Any]] = {}
"""``id(JavaSparkContext) -> (JavaSparkContext, Hadoop configuration, Path class, URI class, raw local FS)``."""


class _HadoopBackend:
    """Hadoop ``FileSystem`` calls through the driver's JVM; local paths on the raw local file system."""

    def __init__(self, spark: SparkSession) -> None:
        sc = spark.sparkContext
        jvm: Any = sc._jvm
        jsc: Any = sc._jsc
        self._jvm = jvm
        # One set of Java objects per SparkContext: py4j resolves a dotted name one segment at a time, and
        # each segment that is not a class ("org", "org.apache", ...) is a failed class lookup across every
        # jar of Spark's class path. Measured (benchmarks/run.py spark mode, 150 images, py4j commands
        # counted): 4,398 such lookups before, 1,347 after (the rest are pyspark's own), and a stat of a
        # missing local file no longer walks a Java exception's chain through py4j.
        cached = _JAVA_CACHE.get(id(jsc))
        if cached is None or cached[0] is not jsc:
            fs_pkg = jvm.org.apache.hadoop.fs
            conf = jsc.hadoopConfiguration()
            cached = (
                jsc,
                conf,
                fs_pkg.Path,
                jvm.java.net.URI,
                fs_pkg.FileSystem.getLocal(conf).getRaw(),
            )
            _JAVA_CACHE.clear()  # one live SparkContext per driver
            _JAVA_CACHE[id(jsc)] = cached
        _, self._conf, self._Path, self._URI, self._local = cached

    def _local_fs(self) -> Any:
        return self._local

    def _file_uri(self, local: str) -> Any:
        return self._Path(self._URI("file", None, os.path.abspath(local), None))

    def _p(self, path: str) -> tuple[Any, Any]:
        """``(Hadoop Path, FileSystem)`` of a storage path."""
        if is_local(path):
            return self._file_uri(local_path(path)), self._local
        jpath = self._Path(path)
        return jpath, jpath.getFileSystem(self._conf)

    @staticmethod
    def _entry(status: Any, name: str) -> _Entry:
        is_dir = bool(status.isDirectory())
        return name, is_dir, 0 if is_dir else int(status.getLen()), status.getModificationTime() / 1000.0

    def stat(self, path: str) -> _Entry | None:
        if is_local(path) and not os.path.exists(local_path(path)):
            return None  # the raw local file system says the same, through a Java exception (many calls)
        jpath, fs = self._p(path)
        try:
            status = fs.getFileStatus(jpath)
        except Exception as err:
            if "FileNotFoundException" in " ".join(c for c, _ in _java_chain(_java_error(err))):
                return None
            raise
        return self._entry(status, basename(path))

    def children(self, path: str) -> list[_Entry]:
        jpath, fs = self._p(path)
        return [self._entry(st, str(st.getPath().getName())) for st in fs.listStatus(jpath)]

    def files_under(self, path: str) -> Iterator[_Entry]:
        jpath, fs = self._p(path)
        root = str(fs.makeQualified(jpath).toUri().getPath()).rstrip("/") + "/"
        it = fs.listFiles(jpath, True)
        while it.hasNext():
            st = it.next()
            full = str(st.getPath().toUri().getPath())
            if not full.startswith(root):
                raise StorageIOError(
                    f"the listing of {path} returned {full}, outside it; {_FIX} (a mount table link?)"
                )
            yield self._entry(st, full[len(root) :])

    def glob(self, pattern: str) -> list[str]:
        jpath, fs = self._p(pattern)
        local = is_local(pattern)
        found = fs.globStatus(jpath) or []
        return [str(st.getPath().toUri().getPath() if local else st.getPath().toString()) for st in found]

    def read(self, path: str) -> bytes:
        jpath, fs = self._p(path)
        stream = fs.open(jpath)
        try:
            data = self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream)
        finally:
            stream.close()
        return bytes(data)

    def write(self, path: str, data: bytes) -> None:
        jpath, fs = self._p(path)
        stream = fs.create(jpath, True)
        try:
            for i in range(0, len(data), _CHUNK):
                stream.write(bytearray(data[i : i + _CHUNK]))
        finally:
            stream.close()

    def rename(self, src: str, dst: str) -> bool:
        jsrc, fs = self._p(src)
        jdst, _ = self._p(dst)
        return bool(fs.rename(jsrc, jdst))

    def delete(self, path: str, recursive: bool) -> bool:
        jpath, fs = self._p(path)
        return bool(fs.delete(jpath, recursive))

    def mkdirs(self, path: str) -> None:
        jpath, fs = self._p(path)
        if not fs.mkdirs(jpath):
            raise StorageIOError(f"cannot create the folder {path}; {_FIX}")

    def copy_from_local(self, local: str, dst: str) -> None:
        jdst, fs = self._p(dst)
        fs.copyFromLocalFile(False, True, self._file_uri(local), jdst)

    def copy_to_local(self, src: str, local: str) -> None:
        jsrc, fs = self._p(src)
        fs.copyToLocalFile(False, jsrc, self._file_uri(local), True)


class _LocalBackend:
    """Plain Python file calls, for local paths when no SparkSession exists."""

    @staticmethod
    def _l(path: str) -> str:
        if not is_local(path):
            raise StoragePathError(
                f"{path} is a URI, and this Storage has no SparkSession to reach it through Hadoop; build it "
                "with Storage(spark) (or get_storage(spark)) once the session has started"
            )
        return os.path.abspath(local_path(path))

    @staticmethod
    def _entry(st: os.stat_result, name: str, is_dir: bool) -> _Entry:
        return name, is_dir, 0 if is_dir else int(st.st_size), float(st.st_mtime)

    def stat(self, path: str) -> _Entry | None:
        p = self._l(path)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            return None
        return self._entry(st, basename(path), os.path.isdir(p))

    def children(self, path: str) -> list[_Entry]:
        p = self._l(path)
        out = []
        with os.scandir(p) as it:
            for e in it:
                with contextlib.suppress(FileNotFoundError):  # removed while listed
                    out.append(self._entry(e.stat(), e.name, e.is_dir()))
        return out

    def files_under(self, path: str) -> Iterator[_Entry]:
        root = self._l(path)
        for dirpath, _, filenames in os.walk(root):
            for f in filenames:
                full = os.path.join(dirpath, f)
                with contextlib.suppress(FileNotFoundError):
                    yield self._entry(os.stat(full), os.path.relpath(full, root), False)

    def glob(self, pattern: str) -> list[str]:
        return pyglob.glob(self._l(pattern))

    def read(self, path: str) -> bytes:
        return Path(self._l(path)).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        p = Path(self._l(path))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def rename(self, src: str, dst: str) -> bool:
        s, d = self._l(src), self._l(dst)
        if os.path.isdir(d):
            return False
        os.replace(s, d)
        return True

    def delete(self, path: str, recursive: bool) -> bool:
        p = self._l(path)
        if os.path.isdir(p) and not os.path.islink(p):
            if recursive:
                shutil.rmtree(p)
            else:
                os.rmdir(p)
            return True
        try:
            os.unlink(p)
        except FileNotFoundError:
            return False
        return True

    def mkdirs(self, path: str) -> None:
        os.makedirs(self._l(path), exist_ok=True)

    def copy_from_local(self, local: str, dst: str) -> None:
        d = self._l(dst)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.isdir(local):
            shutil.copytree(local, d)
        else:
            shutil.copyfile(local, d)

    def copy_to_local(self, src: str, local: str) -> None:
        self.copy_from_local(self._l(src), local)


# ----------------------------------------------------------------------------- Storage

#: A list of paths (``Storage.list`` shadows the builtin inside the class).
_Paths = list[str]


class Storage:
    """Files and folders under local paths and Hadoop URIs, through the driver's Hadoop ``FileSystem``.

    Paths are strings as the user wrote them (``out``, ``file:/x``, ``s3a://b/lake``); listings return
    paths spelled the same way (:func:`join` of the listed folder and the names found). Call it on
    the driver only.

    The method names of ingest's ``_HadoopFS`` helper (``exists``, ``delete``, ``touch``,
    ``read_text``, ``list_names``, ``remove_if_empty``, ``delete_glob``, ``data_files``, ``move``)
    keep their meaning.

    Args:
        spark: the session whose Hadoop configuration (``spark.hadoop.*``) reaches the file systems;
            None for a local-only storage (plain Python file calls; URIs raise :class:`StoragePathError`).
    """

    join = staticmethod(join)

    def __init__(self, spark: SparkSession | None) -> None:
        self._spark = spark
        self._fs: _Backend = _HadoopBackend(spark) if spark is not None else _LocalBackend()

    def __repr__(self) -> str:
        return f"Storage({'hadoop' if self._spark is not None else 'local only'})"

    @property
    def spark(self) -> SparkSession | None:
        """The session whose Hadoop file systems this storage uses (None: local paths only)."""
        return self._spark

    def _call(self, action: str, path: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except StorageError:
            raise
        except FileNotFoundError:
            raise StorageNotFoundError(f"cannot {action} {path}: it does not exist; {_FIX}") from None
        except NotADirectoryError:
            raise StorageNotADirectoryError(f"cannot {action} {path}: a part of it is a file") from None
        except PermissionError:
            raise StorageIOError(
                f"cannot {action} {path}: permission denied; grant the current user access to it"
            ) from None
        except OSError as err:
            raise StorageIOError(f"cannot {action} {path}: {err}") from None
        except Exception as err:
            if _java_error(err) is None and type(err).__module__.split(".")[0] not in ("py4j", "pyspark"):
                raise
            raise _translate(err, action, path) from None

    # ------------------------------------------------------------------ queries

    def info(self, path: str | os.PathLike[str]) -> FileInfo:
        """The :class:`FileInfo` of ``path``.

        Raises:
            StorageNotFoundError: ``path`` does not exist.
        """
        p = os.fspath(path)
        entry = self._call("read the status of", p, lambda: self._fs.stat(p))
        if entry is None:
            raise StorageNotFoundError(
                f"{p} does not exist; check the path (the stage that writes it may not have run)"
            )
        _, is_dir, size, modified = entry
        return FileInfo(p, basename(p), is_dir, size, modified)

    def _stat(self, path: str) -> _Entry | None:
        return self._call("read the status of", path, lambda: self._fs.stat(path))  # type: ignore[no-any-return]

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is an existing file or folder."""
        return self._stat(os.fspath(path)) is not None

    def is_dir(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is an existing folder."""
        entry = self._stat(os.fspath(path))
        return entry is not None and entry[1]

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is an existing file."""
        entry = self._stat(os.fspath(path))
        return entry is not None and not entry[1]

    def walk(
        self,
        path: str | os.PathLike[str],
        *,
        files: bool = True,
        dirs: bool = True,
        recursive: bool = True,
        pattern: str | None = None,
        include_hidden: bool = True,
        missing_ok: bool = False,
    ) -> Iterator[FileInfo]:
        """Yield the files and/or folders under the folder ``path``, lazily (unsorted).

        Args:
            path: the folder.
            files: yield files.
            dirs: yield folders.
            recursive: descend into sub-folders (files only: one flat Hadoop listing, cheap on object stores).
            pattern: ``fnmatch`` pattern on the names (``*.parquet``).
            include_hidden: also names starting with ``_`` or ``.`` (and what lies under such folders).
            missing_ok: a missing ``path`` yields nothing instead of raising.

        Raises:
            StorageNotFoundError: ``path`` does not exist (unless ``missing_ok``).
            StorageNotADirectoryError: ``path`` is a file.
        """
        root = os.fspath(path)
        entry = self._stat(root)
        if entry is None:
            if missing_ok:
                return
            raise StorageNotFoundError(f"cannot list {root}: it does not exist; {_FIX}")
        if not entry[1]:
            raise StorageNotADirectoryError(
                f"cannot list {root}: it is a file, not a folder; pass its folder"
            )

        def keep(rel: str, is_dir: bool) -> bool:
            name = posixpath.basename(rel)
            if not include_hidden and any(_hidden(part) for part in rel.split("/")):
                return False
            if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
                return False
            return dirs if is_dir else files

        if recursive and not dirs:
            found = self._call("list", root, lambda: list(self._fs.files_under(root)))
            for rel, is_dir, size, modified in found:
                if keep(rel, is_dir):
                    yield FileInfo(join(root, rel), rel, is_dir, size, modified)
            return
        pending = [""]
        while pending:
            prefix = pending.pop()
            folder = join(root, prefix) if prefix else root
            children = self._call("list", folder, lambda f=folder: self._fs.children(f))  # type: ignore[misc]
            for name, is_dir, size, modified in children:
                rel = f"{prefix}/{name}" if prefix else name
                if keep(rel, is_dir):
                    yield FileInfo(join(root, rel), rel, is_dir, size, modified)
                if recursive and is_dir and (include_hidden or not _hidden(name)):
                    pending.append(rel)

    def list(
        self,
        path: str | os.PathLike[str],
        *,
        files: bool = True,
        dirs: bool = True,
        recursive: bool = False,
        pattern: str | None = None,
        include_hidden: bool = True,
        missing_ok: bool = False,
    ) -> _Paths:
        """Sorted paths of the files and/or folders in the folder ``path`` (see :meth:`walk`).

        ``store.list(join(out, "metrics"), dirs=False, pattern="eval_*.json", missing_ok=True)``.
        """
        found = self.walk(
            path,
            files=files,
            dirs=dirs,
            recursive=recursive,
            pattern=pattern,
            include_hidden=include_hidden,
            missing_ok=missing_ok,
        )
        return sorted(info.path for info in found)

    def glob(self, pattern: str | os.PathLike[str]) -> _Paths:
        """Sorted paths matching a Hadoop glob (``*``, ``?``, ``[ab]``, ``{a,b}``).

        Matches of a local pattern are absolute local paths; matches of a URI are URIs. Without a
        SparkSession, Python's :mod:`glob` is used (no ``{a,b}``).
        """
        p = os.fspath(pattern)
        return sorted(self._call("glob", p, lambda: self._fs.glob(p)))

    def list_names(self, path: str | os.PathLike[str]) -> _Paths | None:
        """Names in folder ``path`` (unsorted); None when it does not exist.

        Raises:
            StorageNotADirectoryError: ``path`` is a file.
        """
        p = os.fspath(path)
        if not self.exists(p):
            return None
        return [info.rel for info in self.walk(p, recursive=False)]

    def data_files(self, root: str | os.PathLike[str]) -> _Paths:
        """Paths relative to ``root`` of its files (recursive) whose names do not start with ``_`` or ``.``.

        Empty when ``root`` does not exist.
        """
        found = self.walk(root, dirs=False, recursive=True, missing_ok=True)
        return [info.rel for info in found if not _hidden(info.name)]

    # ------------------------------------------------------------------ read

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        """The content of the file ``path``.

        Raises:
            StorageNotFoundError: it does not exist.
        """
        p = os.fspath(path)
        if self.is_dir(p):
            raise StorageIOError(f"cannot read {p}: it is a folder; pass a file in it")
        return self._call("read", p, lambda: self._fs.read(p))  # type: ignore[no-any-return]

    def read_text(self, path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
        """The content of the text file ``path``.

        Raises:
            StorageNotFoundError: it does not exist.
            StorageFormatError: it is not text in ``encoding``.
        """
        p = os.fspath(path)
        try:
            return self.read_bytes(p).decode(encoding)
        except UnicodeDecodeError as err:
            raise StorageFormatError(
                f"{p} is not {encoding} text (byte {err.start}); re-write it with the stage that made it"
            ) from None

    def read_json(self, path: str | os.PathLike[str]) -> Any:
        """The parsed JSON file ``path``.

        Raises:
            StorageNotFoundError: it does not exist.
            StorageFormatError: it is not UTF-8 JSON.
        """
        p = os.fspath(path)
        text = self.read_text(p)
        try:
            return json.loads(text)
        except ValueError as err:
            raise StorageFormatError(
                f"{p} is not valid JSON ({err}); re-run the stage that writes it"
            ) from None

    # ------------------------------------------------------------------ write

    def _temp_sibling(self, path: str) -> str:
        return join(parent(path), f".{basename(path)}.{secrets.token_hex(4)}.tmp")

    def _replace(self, tmp: str, path: str) -> None:
        """Rename ``tmp`` onto ``path`` (HDFS and ViewFs refuse to rename onto an existing file)."""
        if self._call("rename", tmp, lambda: self._fs.rename(tmp, path)):
            return
        if self.exists(path):
            self.delete(path)
            if self._call("rename", tmp, lambda: self._fs.rename(tmp, path)):
                return
        raise StorageIOError(f"could not rename {tmp} to {path}; {_FIX}")

    def write_bytes(self, path: str | os.PathLike[str], data: bytes, *, atomic: bool = True) -> str:
        """Write ``data`` to the file ``path`` (replaced; missing folders are created); returns ``path``.

        Args:
            atomic: write a hidden temporary sibling first, then rename it: readers never see half a file.

        Raises:
            StorageIOError: the file system refused the write.
        """
        p = os.fspath(path)
        if self.is_dir(p):
            raise StorageExistsError(
                f"cannot write the file {p}: a folder has that name; remove it or rename"
            )
        if not atomic:
            self._call("write", p, lambda: self._fs.write(p, bytes(data)))
            return p
        tmp = self._temp_sibling(p)
        try:
            self._call("write", tmp, lambda: self._fs.write(tmp, bytes(data)))
            self._replace(tmp, p)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.delete(tmp, False)
            raise
        return p

    def write_text(
        self, path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", atomic: bool = True
    ) -> str:
        """Write ``text`` to the file ``path`` (see :meth:`write_bytes`); returns ``path``."""
        return self.write_bytes(path, text.encode(encoding), atomic=atomic)

    def write_json(
        self,
        path: str | os.PathLike[str],
        data: Any,
        *,
        indent: int | None = 2,
        default: Callable[[Any], Any] | None = None,
        atomic: bool = True,
    ) -> str:
        """Write ``data`` as JSON (plus a final newline) to the file ``path``; returns ``path``.

        Raises:
            TypeError: ``data`` holds a value JSON cannot represent and ``default`` does not convert.
        """
        text = json.dumps(data, indent=indent, default=default) + "\n"
        return self.write_text(path, text, atomic=atomic)

    def touch(self, path: str | os.PathLike[str], text: str = "") -> None:
        """Write ``text`` to ``path`` atomically (a marker file); a killed process leaves no half marker."""
        self.write_text(path, text)

    def append_text(self, path: str | os.PathLike[str], text: str) -> str:
        """Append ``text`` to the text file ``path`` (created when missing), by an atomic rewrite.

        Object stores cannot append, so the whole file is read and written again: for small logs and
        markers only.
        """
        p = os.fspath(path)
        old = self.read_text(p) if self.is_file(p) else ""
        return self.write_text(p, old + text)

    # ------------------------------------------------------------------ change

    def mkdirs(self, path: str | os.PathLike[str]) -> str:
        """Create the folder ``path`` and its parents (nothing when it exists); returns ``path``.

        Raises:
            StorageExistsError: a file has that name.
        """
        p = os.fspath(path)
        if self.is_file(p):
            raise StorageExistsError(f"cannot create the folder {p}: a file has that name; remove it")
        self._call("create the folder", p, lambda: self._fs.mkdirs(p))
        return p

    def delete(
        self, path: str | os.PathLike[str], *, recursive: bool = True, missing_ok: bool = True
    ) -> bool:
        """Delete a file or folder (with its content when ``recursive``); True when something was deleted.

        Raises:
            StorageNotFoundError: ``path`` does not exist and not ``missing_ok``.
        """
        p = os.fspath(path)
        if not self.exists(p):
            if missing_ok:
                return False
            raise StorageNotFoundError(f"cannot delete {p}: it does not exist")
        return bool(self._call("delete", p, lambda: self._fs.delete(p, recursive)))

    def delete_glob(self, pattern: str | os.PathLike[str]) -> int:
        """Delete (recursively) every path matching the Hadoop glob ``pattern``; returns how many."""
        found = self.glob(pattern)
        for p in found:
            self._call("delete", p, lambda p=p: self._fs.delete(p, True))  # type: ignore[misc]
        return len(found)

    def remove_if_empty(self, path: str | os.PathLike[str]) -> bool:
        """Delete the folder ``path`` when it exists and is empty; True when it was deleted."""
        p = os.fspath(path)
        if self.list_names(p) == []:
            return bool(self._call("delete", p, lambda: self._fs.delete(p, False)))
        return False

    def rename(
        self, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, overwrite: bool = False
    ) -> str:
        """Rename the file or folder ``src`` to ``dst`` (same file system); returns ``dst``.

        Raises:
            StorageNotFoundError: ``src`` does not exist.
            StorageExistsError: ``dst`` exists and not ``overwrite``.
        """
        s, d = os.fspath(src), os.fspath(dst)
        if not self.exists(s):
            raise StorageNotFoundError(f"cannot rename {s}: it does not exist")
        if self.exists(d):
            if not overwrite:
                raise StorageExistsError(
                    f"cannot rename {s} to {d}: {d} exists; delete it first or pass overwrite=True"
                )
            self.delete(d)
        self.mkdirs(parent(d))
        if not self._call("rename", s, lambda: self._fs.rename(s, d)):
            raise StorageIOError(f"could not rename {s} to {d}; both must be on the same file system")
        return d

    def move(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        """Rename ``src`` to ``dst`` unless ``dst`` exists already (a replayed move does nothing)."""
        if self.exists(dst):
            return
        self.rename(src, dst)

    def move_tree(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> bool:
        """Move the files under the folder ``src`` to the same relative paths under ``dst``.

        ``src``, or a folder of it, whose counterpart under ``dst`` does not exist is renamed in one call
        (with its hidden files: checksums); the rest moves file by file, and files whose destination
        exists stay (a replayed move does nothing), as with :meth:`move`. So a table's first write is
        one rename, and a new partition of an existing table one more, where listing and moving each
        file costs about 10 file-system calls through the driver's gateway (measured: 300 files, 3.1–3.8 s
        listed and moved one by one, against one rename).

        Returns:
            Whether ``src`` existed (False: nothing to move).
        """
        s, d = os.fspath(src), os.fspath(dst)
        if not self.exists(s):
            return False
        if self.exists(d):
            self._move_level(s, d)
        else:
            self.rename(s, d)
        return True

    def _move_level(self, src: str, dst: str) -> None:
        for info in list(self.walk(src, recursive=False, include_hidden=False, missing_ok=True)):
            target = join(dst, info.name)
            if not info.is_dir:
                self.move(info.path, target)
            elif self.exists(target):
                self._move_level(info.path, target)
            else:
                self.rename(info.path, target)

    # ------------------------------------------------------------------ local files

    def upload(self, local_src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
        """Copy a local file or folder to ``dst``, which becomes a copy of it (replaced); returns ``dst``.

        The copy goes to a hidden temporary sibling first, then is renamed into place.

        Raises:
            StorageNotFoundError: ``local_src`` does not exist.
        """
        src, d = os.path.abspath(local_path(local_src)), os.fspath(dst)
        if not os.path.exists(src):
            raise StorageNotFoundError(f"cannot upload {src}: it does not exist; pass an existing local path")
        if is_local(d) and os.path.abspath(local_path(d)) == src:
            return d
        tmp = self._temp_sibling(d)
        try:
            self._call("upload to", d, lambda: self._fs.copy_from_local(src, tmp))
            if self.exists(d):
                self.delete(d)
            self.rename(tmp, d)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.delete(tmp, True)
            raise
        return d

    def download(self, src: str | os.PathLike[str], local_dst: str | os.PathLike[str]) -> Path:
        """Copy the stored file or folder ``src`` to the local path ``local_dst`` (replaced); returns it.

        Raises:
            StorageNotFoundError: ``src`` does not exist.
        """
        s = os.fspath(src)
        dst = Path(os.path.abspath(local_path(local_dst)))
        if not self.exists(s):
            raise StorageNotFoundError(f"cannot download {s}: it does not exist; {_FIX}")
        if is_local(s) and os.path.abspath(local_path(s)) == str(dst):
            return dst
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        elif dst.exists() or dst.is_symlink():
            dst.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        self._call("download", s, lambda: self._fs.copy_to_local(s, str(dst)))
        return dst

    @contextlib.contextmanager
    def local_copy(self, path: str | os.PathLike[str]) -> Iterator[Path]:
        """A local path holding the stored file or folder ``path``, for libraries that need one (read only).

        A local ``path`` is given as it is (no copy); anything else is fetched into a temporary
        folder that is removed on exit.

        Raises:
            StorageNotFoundError: ``path`` does not exist.
        """
        p = os.fspath(path)
        if is_local(p):
            if not self.exists(p):
                raise StorageNotFoundError(f"{p} does not exist; check the path")
            yield Path(os.path.abspath(local_path(p)))
            return
        tmp = tempfile.mkdtemp(prefix="medimg-storage-")
        try:
            yield self.download(p, os.path.join(tmp, basename(p) or "data"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def staged_file(self, dst: str | os.PathLike[str]) -> Iterator[Path]:
        """A local temporary file path to write; on a normal exit it is uploaded to ``dst`` (atomically).

        ``with store.staged_file(join(model_dir, "model.joblib")) as f: joblib.dump(est, f)``.
        """
        d = os.fspath(dst)
        tmp = tempfile.mkdtemp(prefix="medimg-stage-")
        try:
            local = Path(tmp) / (basename(d) or "data")
            yield local
            if not local.exists():
                raise StorageNotFoundError(f"nothing was written to {local} for {d}; write the file first")
            self.upload(local, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def staged_dir(self, dst: str | os.PathLike[str]) -> Iterator[Path]:
        """An empty local temporary folder; on a normal exit ``dst`` becomes a copy of it (replaced).

        For writers that need a local folder (e.g. a report with image files next to its HTML).
        """
        d = os.fspath(dst)
        tmp = tempfile.mkdtemp(prefix="medimg-stage-")
        try:
            yield Path(tmp)
            self.upload(tmp, d)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def get_storage(spark: SparkSession | None = None) -> Storage:
    """The :class:`Storage` of ``spark``, else of the active SparkSession, else a local-only one.

    A local-only storage (no session has started) reaches local paths with plain Python file calls
    and raises :class:`StoragePathError` for URIs.
    """
    if spark is None:
        try:
            from pyspark.sql import SparkSession
        except ImportError:  # pragma: no cover - pyspark is a dependency
            return Storage(None)
        spark = SparkSession.getActiveSession()
    return Storage(spark)
