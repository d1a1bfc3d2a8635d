"""Planning shared by ``medimg ingest`` and the ``medimg``/``dicom`` data sources.

The union row schema the decoder yields (:data:`UNION_SCHEMA`), Arrow batching of rows, the quarantine
rows of files that are never read (:data:`UnreadFile`: empty files, listing problems), how listed
local files are spread over tasks (:func:`task_slices`), run ids and the ``--labels`` CSV. Both
:mod:`medimg_spark.io.ingest` (the writer) and :mod:`medimg_spark.io.datasource` (the reader) import
from here, so neither imports the other's private names.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark.errors import ConfigError, IngestFileError
from medimg_spark.io.listing import (
    BROKEN_SYMLINK,
    NAME_ENCODING,
    NO_PERMISSION,
    NOT_REGULAR,
    UNLISTABLE_DIR,
    Listing,
)
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql.types import StructType

__all__ = [
    "EMPTY_MESSAGE",
    "LOCAL_BYTES_PER_TASK",
    "LOCAL_MAX_TASKS",
    "LOCAL_OPEN_COST",
    "UNION_SCHEMA",
    "FileNameEncodingError",
    "LabelsCSV",
    "UnreadFile",
    "UnreadablePathError",
    "new_run_id",
    "problem_rows",
    "read_labels",
    "rows_to_batch",
    "task_slices",
]


def _union_schema() -> StructType:
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    fields: dict[str, StructField] = {"_kind": StructField("_kind", StringType(), False)}
    for schema in (IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA):
        for f in schema.fields:
            if f.name == "quarantined_at":  # stamped by Spark when the table is written
                continue
            if f.name in fields:
                if fields[f.name].dataType != f.dataType:
                    raise TypeError(f"column {f.name} has different types in two table schemas")
                continue
            fields[f.name] = StructField(f.name, f.dataType, True)
    # instance rows of de-identified reads: path components equal to a header PHI value (a count only)
    fields["_path_phi"] = StructField("_path_phi", IntegerType(), True)
    return StructType(list(fields.values()))


UNION_SCHEMA = _union_schema()


class FileNameEncodingError(IngestFileError):
    """The file's name is not valid UTF-8, so Spark and Hadoop cannot open it (quarantined unread)."""


class UnreadablePathError(IngestFileError):
    """A listed path Spark's reader cannot be given: a broken symlink, not a regular file, no read
    permission, a folder that cannot be listed, or a file the reader did not return (quarantined unread)."""


def new_run_id(prefix: str = "ingest") -> str:
    """A sortable, unique run id such as ``ingest-20261121T101500Z-3fa2c1``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def rows_to_batch(rows: list[dict[str, Any]], arrow_schema: pa.Schema) -> pa.RecordBatch:
    """Rows (dicts, missing keys null) as one Arrow batch of ``arrow_schema``."""
    import pyarrow as pa

    columns = [
        pa.array([r.get(name) for r in rows], type=arrow_schema.field(name).type)
        for name in arrow_schema.names
    ]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


@dataclass
class LabelsCSV:
    """The ``--labels`` CSV.

    Attributes:
        path: the CSV file.
        by_path: ``{local path: (label, split)}``; each row is keyed by its path as written (made absolute
            against the CSV's folder) and by its symlink-resolved real path.
        by_sha: ``{file sha256: (label, split)}``.
        rows: per data row, its keys (paths, or the sha256): a row matches a file when one key does.
    """

    path: str
    by_path: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    by_sha: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    rows: list[tuple[str, ...]] = field(default_factory=list)


_LABEL_COLUMNS = "a header line naming 'label' and 'path' or 'file_sha256' (optional 'split')"


def read_labels(path: str) -> LabelsCSV:
    """Read ``--labels``: columns ``path`` or ``file_sha256``, ``label``, optional ``split``.

    Relative paths are resolved against the CSV's folder. Error messages name the file, the line and
    the expected columns but never quote the file's content.

    Raises:
        ConfigError: the file is missing, not UTF-8 CSV, or lacks the columns.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labels file {p} does not exist; pass a CSV with {_LABEL_COLUMNS}")
    out = LabelsCSV(str(p))
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if "label" not in cols or not ({"path", "file_sha256"} & cols):
                raise ConfigError(
                    f"labels file {p} does not have the expected columns: it needs {_LABEL_COLUMNS}, "
                    "e.g. 'path,label,split'"
                )
            for n, rec in enumerate(reader, start=2):
                label = (rec.get("label") or "").strip() or None
                split = (rec.get("split") or "").strip() or None
                sha = (rec.get("file_sha256") or "").strip().lower()
                where = (rec.get("path") or "").strip()
                if sha:
                    out.by_sha[sha] = (label, split)
                    out.rows.append((sha,))
                elif where:
                    if "\x00" in where:
                        raise ConfigError(
                            f"labels file {p}, line {n}: 'path' contains a NUL byte; fix the CSV"
                        )
                    target = Path(where)
                    if not target.is_absolute():
                        target = p.parent / target
                    keys = tuple(dict.fromkeys([os.path.abspath(target), os.path.realpath(target)]))
                    for key in keys:
                        out.by_path[key] = (label, split)
                    out.rows.append(keys)
                else:
                    raise ConfigError(f"labels file {p}, line {n}: neither 'path' nor 'file_sha256' is set")
    except UnicodeDecodeError:
        raise ConfigError(f"labels file {p} is not UTF-8 text; pass a CSV with {_LABEL_COLUMNS}") from None
    except csv.Error as err:
        line = getattr(err, "line_num", None) or "?"
        raise ConfigError(
            f"labels file {p} is not a readable CSV (line {line}); pass a CSV with {_LABEL_COLUMNS}"
        ) from None
    return out


#: A file quarantined on the driver without being read: (path, sha256, size, error class, message).
UnreadFile = tuple[str, str | None, int | None, str, str]

EMPTY_MESSAGE = "file has zero bytes; re-export or remove it"


def too_large_message(size: int | str, limit: int) -> str:
    """The quarantine message of a file over ``ingest.max_file_bytes`` (``size``: its bytes, or a marker
    where a Spark column fills them in)."""
    return (
        f"file is {size} bytes, over the {limit}-byte limit of the binaryFile reader; "
        "split or convert it before ingest"
    )


PROBLEMS: dict[str, tuple[type[IngestFileError], str]] = {
    NAME_ENCODING: (
        FileNameEncodingError,
        "the file name is not valid UTF-8 (shown with \\xNN escapes), so Spark cannot open it; rename it "
        "to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest) and ingest again",
    ),
    BROKEN_SYMLINK: (
        UnreadablePathError,
        "broken symlink (its target does not exist); fix or remove the link",
    ),
    NOT_REGULAR: (
        UnreadablePathError,
        "not a regular file (a FIFO, socket or device); remove it from the input folders",
    ),
    NO_PERMISSION: (UnreadablePathError, "no read permission; grant read access (chmod) and ingest again"),
    UNLISTABLE_DIR: (
        UnreadablePathError,
        "folder cannot be listed (no permission), none of its files was read; grant read and execute "
        "access (chmod) and ingest again",
    ),
}


#: Weight (bytes of file content plus :data:`LOCAL_OPEN_COST` per file) of a task of a local scan, at most.
#: Each read task has a fixed cost besides its files: the read command unpickled in a Python worker, the
#: Parquet writers of its output partitions and their buffers in the JVM. With 128 MiB (Spark's
#: ``maxPartitionBytes``) benchmarks/run.py's N = 2,000 corpus (3,000 files) was 106 tasks of about 28
#: files; with 32 or 16 tasks ingest took about 10 s less (66.9-74.8 s against 78.7-88.2 s) and 8-14 JVM
#: CPU-s less (measured side by side, ``files_per_partition`` 94 and 188, 2026-12-01).
LOCAL_BYTES_PER_TASK = 512 << 20
#: What opening one file weighs when files are split into tasks (``spark.sql.files.openCostInBytes``).
LOCAL_OPEN_COST = 4 << 20
#: Most tasks of one local scan (a read command ships to every task: more tasks, more copies of it).
LOCAL_MAX_TASKS = 100_000


def task_slices(sizes: list[int], parallelism: int) -> int:
    """How many tasks read files of these sizes.

    Each file weighs its size plus :data:`LOCAL_OPEN_COST`. There is a task per core, or more when the
    weight needs them at :data:`LOCAL_BYTES_PER_TASK` each, rounded up to a multiple of ``parallelism``
    (the tasks are dealt equal weight by :func:`~medimg_spark.io.datasource.balance_slices`, so the
    cores finish their last round together). At least one task, at most one per file and
    :data:`LOCAL_MAX_TASKS`.
    """
    cores = max(1, parallelism)
    weight = sum(size + LOCAL_OPEN_COST for size in sizes)
    tasks = max(cores, -(-weight // LOCAL_BYTES_PER_TASK))
    tasks = -(-tasks // cores) * cores
    return max(1, min(len(sizes), tasks, LOCAL_MAX_TASKS))


def problem_rows(listing: Listing) -> list[UnreadFile]:
    """Quarantine rows of the listing's problems (files Spark's reader must not be given)."""
    out: list[UnreadFile] = []
    for prob in listing.problems:
        cls, message = PROBLEMS[prob.kind]
        out.append((prob.path, None, prob.size, cls.__name__, message))
    return out
