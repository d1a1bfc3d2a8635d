"""Spark-native reading: ``spark.read.format("medimg" | "dicom").load(path)`` and ``readStream``.

Two Python Data Sources (Spark 4 ``pyspark.sql.datasource``) over local files and folders, decoding
in the executors exactly as ``medimg ingest`` does (:func:`medimg_spark.io.files.process_files`
under the same limits, crash guard, time budget, de-identification hook and labels):

* ``medimg`` reads every supported format (DICOM, PNG, JPEG, TIFF, NIfTI, MedMNIST ``.npz``, NRRD,
  MetaImage).
* ``dicom`` reads DICOM content only: a file whose content is another supported format becomes one
  quarantine row (``stage=parse``, ``error_class=NotDicomError``) instead of image rows, so that it
  still has exactly one outcome; undecodable content is quarantined as by ``medimg``.

Option ``table`` picks the rows: ``images`` (default), ``instances``, ``quarantine``, or ``all`` (the
three tables' columns with a ``_kind`` column: ``image``, ``instance`` or ``quarantine``, as the
ingest decoder produces them, without ``quarantined_at``). The read is *per file*: it does not
deduplicate identical content nor skip files of earlier runs; that is the writer's (ingest's) job.
``medimg ingest`` decodes its local inputs with this reader's per-task code (:func:`read_files`).

Planning (listing with :func:`medimg_spark.io.listing.list_local`, split sizing with
:func:`medimg_spark.io.planning.task_slices`) runs in Spark's data-source planning worker on the driver host; decoding runs in
the tasks. Only local paths and ``file:`` URIs can be read (the Python tasks open the files
themselves); ``hdfs:``/``s3a:`` inputs raise :class:`NonLocalInputError`: use ``medimg ingest``.

The pseudonymisation key is never an option value that could reach the query plan: pass a key
*file* (``key_file``), the environment (``$MEDIMG_DEID_KEY`` / ``$MEDIMG_DEID_KEY_FILE``), or
``deid_secret`` whose name matches Spark's default ``spark.redaction.regex`` (its value is shown as
``*********(redacted)`` in plans).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pyspark.sql.datasource import DataSource, DataSourceReader, DataSourceStreamReader, InputPartition
from pyspark.sql.types import StringType, StructField, StructType

from medimg_spark.config import IngestConfig
from medimg_spark.errors import ConfigError, EmptyFileError, FileTooLargeError, IngestFileError
from medimg_spark.io.files import (
    IMAGE,
    INSTANCE,
    QUARANTINE,
    CrashGuard,
    FileContext,
    local_path,
    path_hook,
    process_files,
)
from medimg_spark.io.listing import Listing, list_local
from medimg_spark.io.planning import (
    EMPTY_MESSAGE,
    UNION_SCHEMA,
    LabelsCSV,
    UnreadFile,
    new_run_id,
    problem_rows,
    read_labels,
    rows_to_batch,
    task_slices,
    too_large_message,
)
from medimg_spark.schema import IMAGES_SCHEMA, INSTANCES_SCHEMA, QUARANTINE_SCHEMA

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DataSourceOptionError",
    "DicomDataSource",
    "FilesDataSource",
    "MedimgDataSource",
    "NonLocalInputError",
    "NotDicomError",
    "ReadOptions",
    "read_files",
    "register",
    "register_files_source",
]


class DataSourceOptionError(ConfigError):
    """An option of ``spark.read.format("medimg"/"dicom")`` is unknown or has an invalid value."""


class NonLocalInputError(ConfigError):
    """The data sources read local paths only (Python tasks cannot open ``hdfs:``/``s3a:`` files)."""


class NotDicomError(IngestFileError):
    """``format("dicom")`` was given a file whose content is another format (quarantined)."""


TableName = Literal["images", "instances", "quarantine", "all"]

#: ``ReadPlan.table`` of ingest's decoding pass (not a read option): rows of :data:`STAGED_SCHEMA`.
STAGED = "staged"
#: Rows of ingest's decoding pass: ``_kind`` and the ``images`` table's columns. Image rows are the rows
#: of ``images`` as they are written (ingest writes them partitioned by ``_kind`` and ``modality``, so
#: the image files hold exactly the ``images`` table's columns and are moved into it, not rewritten).
#: Instance and quarantine rows (small, no pixels) set ``file_sha256`` and ``source_path`` (the
#: deduplication keys) and carry their whole row as UTF-8 JSON in ``pixels``
#: (:func:`staged_row`; read back with ``from_json`` and :data:`SIDE_SCHEMA`); their other columns are null.
STAGED_SCHEMA = StructType(
    [StructField("_kind", StringType(), False)]
    + [StructField(f.name, f.dataType, True) for f in IMAGES_SCHEMA.fields]
)
#: The JSON in ``pixels`` of a staged instance or quarantine row: the union row without ``_kind``/``pixels``.
SIDE_SCHEMA = StructType([f for f in UNION_SCHEMA.fields if f.name not in ("_kind", "pixels")])

#: The schema of each ``table`` option value (and of ingest's :data:`STAGED` rows).
SCHEMAS: dict[str, StructType] = {
    "images": IMAGES_SCHEMA,
    "instances": INSTANCES_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
    "all": UNION_SCHEMA,
    STAGED: STAGED_SCHEMA,
}
_KIND_OF_TABLE = {"images": IMAGE, "instances": INSTANCE, "quarantine": QUARANTINE}
#: Options whose values are secrets: never echoed in an error message.
_SECRET_OPTIONS = frozenset({"deid_secret"})


class ReadOptions(BaseModel):
    """The options of the ``medimg`` and ``dicom`` data sources (Spark passes every value as a string).

    Option names are case-insensitive and may be written in camelCase (``maxFilesPerTrigger``) or
    snake_case (``max_files_per_trigger``). Limits and labels left unset come from ``config``'s
    ``ingest`` section, else from ingest's defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="A local file or folder (read recursively), or a file: URI.")
    table: TableName = Field("images", description="images, instances, quarantine, or all (with _kind).")
    frames: Literal["all", "first"] = Field("all", description="all frames, or only frame 0 of each file.")
    config: str | None = Field(None, description="YAML config: its ingest and privacy sections.")
    keep_phi: bool = Field(False, description="Keep identifiers (no de-identification), as --keep-phi.")
    key_file: str | None = Field(None, description="Pseudonymisation key file (0600).")
    deid_secret: str | None = Field(None, description="The key itself (redacted in plans by Spark).")
    ephemeral_key: bool = Field(False, description="A random key (demos; pseudonyms differ per read).")
    vault: str | None = Field(None, description="Write the re-identification vault here.")
    vault_key_file: str | None = Field(None, description="Vault master-key file.")
    allow_burned_in: bool = Field(False, description="Do not quarantine frames that may carry text.")
    deid_options: str | None = Field(None, description="Comma-separated `medimg deid --option` names.")
    default_modality: str | None = Field(None, min_length=1, max_length=16)
    max_file_bytes: int | None = Field(None, ge=1)
    max_decoded_bytes: int | None = Field(None, ge=1 << 20)
    max_decompressed_bytes: int | None = Field(None, ge=1)
    max_seconds_per_file: float | None = Field(None, gt=0)
    output_batch_bytes: int | None = Field(None, ge=1 << 20)
    labels: str | None = Field(None, description="Labels CSV, as ingest --labels.")
    label_from_parent_dir: bool | None = None
    run_id: str | None = Field(None, description="ingest_run_id of the rows (default: generated).")
    parallelism: int | None = Field(None, ge=1, description="Tasks to aim for (default: CPUs).")
    max_files_per_trigger: int | None = Field(None, ge=1, description="Streaming: files per micro-batch.")
    settle_seconds: float = Field(
        1.0, ge=0, description="Streaming: a file is read once it is this old (change time)."
    )

    @classmethod
    def parse(cls, options: dict[str, str], source: str = "medimg") -> ReadOptions:
        """Validate Spark's option map.

        Raises:
            DataSourceOptionError: names the bad option and the fix (never a secret's value).
        """
        by_key = {name.replace("_", ""): name for name in cls.model_fields}
        data: dict[str, str] = {}
        for key, value in options.items():
            name = by_key.get(key.lower().replace("_", ""))
            if name is None:
                raise DataSourceOptionError(
                    f"unknown option {key!r} of spark.read.format({source!r}); valid options: "
                    f"{', '.join(sorted(cls.model_fields))}. Fix the option name"
                )
            data[name] = value
        if "path" not in data:
            raise DataSourceOptionError(
                f"no path: call spark.read.format({source!r}).load(PATH) with a local file or folder"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            lines = []
            for e in err.errors():
                name = ".".join(str(x) for x in e["loc"])
                shown = "" if name in _SECRET_OPTIONS else f" (got {data.get(name)!r})"
                lines.append(f"option {name!r}{shown}: {e['msg']}")
            raise DataSourceOptionError(
                f"invalid option(s) of spark.read.format({source!r}): " + "; ".join(lines) + ". Fix the value"
            ) from None


def _local_input(path: str) -> str:
    """The absolute local path of ``path``.

    Raises:
        NonLocalInputError: a Hadoop URI other than ``file:``.
        DataSourceOptionError: the path does not exist.
    """
    if ("://" in path and not path.startswith("file:")) or "://" in local_path(path):
        raise NonLocalInputError(
            f"{path}: spark.read.format('medimg'/'dicom') reads local paths and file: URIs only (its Python "
            "tasks open the files themselves); ingest hdfs:/s3a: inputs with `medimg ingest`, which reads "
            "them through Spark's binaryFile source"
        )
    local = os.path.abspath(local_path(path))
    if not os.path.lexists(local):
        raise DataSourceOptionError(f"path {path} does not exist; pass an existing local file or folder")
    return local


def _ingest_config(opts: ReadOptions, base: IngestConfig) -> IngestConfig:
    data = base.model_dump()
    for name in (
        "default_modality",
        "max_file_bytes",
        "max_decoded_bytes",
        "max_decompressed_bytes",
        "max_seconds_per_file",
        "output_batch_bytes",
        "label_from_parent_dir",
        "max_files_per_trigger",
    ):
        value = getattr(opts, name)
        if value is not None:
            data[name] = value
    try:
        return IngestConfig.model_validate(data)
    except ValidationError as err:
        raise DataSourceOptionError(
            f"invalid limit option: {err.errors()[0]['msg']}; fix the value"
        ) from None


def _deidentifier(opts: ReadOptions, cfg: Any, run_id: str) -> Any:
    """The ingest de-identification hook from the options (None with ``keep_phi``), as ``medimg ingest``."""
    keyed = opts.key_file or opts.deid_secret or opts.ephemeral_key
    if opts.keep_phi:
        if keyed or opts.vault:
            raise DataSourceOptionError(
                "option keep_phi keeps identifiers: drop key_file/deid_secret/ephemeral_key/vault, or keep_phi"
            )
        return None
    from medimg_spark.config import deid_config
    from medimg_spark.privacy import Deidentifier, DeidKeyError, load_key
    from medimg_spark.privacy.hook import IngestDeidentifier
    from medimg_spark.privacy.keys import decode_key_text
    from medimg_spark.privacy.vault import resolve_vault_key_file

    names = [n.strip() for n in (opts.deid_options or "").split(",") if n.strip()]
    dcfg = deid_config(cfg, opts.config or "<defaults>", names)
    if sum(bool(x) for x in (opts.key_file, opts.deid_secret, opts.ephemeral_key)) > 1:
        raise DataSourceOptionError("pass one of the options key_file, deid_secret, ephemeral_key")
    try:
        if opts.deid_secret:
            key = decode_key_text(opts.deid_secret, source="option deid_secret")
        else:
            key = load_key(opts.key_file, ephemeral=opts.ephemeral_key)
    except DeidKeyError as err:
        raise DataSourceOptionError(
            f"{err}. As options: key_file=FILE, deid_secret (redacted in plans), ephemeral_key=true (demos), "
            "or keep_phi=true to keep identifiers"
        ) from None
    vault_key = resolve_vault_key_file(opts.vault_key_file or dcfg.vault_key_file) if opts.vault else None
    deid = Deidentifier(dcfg, key, allow_burned_in=opts.allow_burned_in)
    return IngestDeidentifier(deid, vault_dir=opts.vault, vault_key_file=vault_key, run_id=run_id)


@dataclass
class ReadPlan:
    """Everything a read task needs (pickled into the tasks with the reader).

    Attributes:
        paths: the absolute local inputs.
        table: the ``table`` option.
        frames: the ``frames`` option.
        dicom_only: ``format("dicom")``: other content is quarantined as :class:`NotDicomError`.
        ctx: the per-file context (limits, labels, de-identification, run id).
        flush_bytes: Arrow batches are yielded at about this many bytes (ingest's output_batch_bytes).
        parallelism: how many tasks a read aims for.
        files_per_task: files per task instead of size-based splits (ingest's ``files_per_partition``).
    """

    paths: list[str]
    table: str
    frames: str
    dicom_only: bool
    ctx: FileContext
    flush_bytes: int
    parallelism: int
    files_per_task: int | None = None


def make_plan(options: dict[str, str], source: str) -> tuple[ReadOptions, ReadPlan]:
    """Validate options and build the read plan (on the driver host, before any task).

    Raises:
        DataSourceOptionError, NonLocalInputError, ConfigError: bad options, inputs, config or key.
    """
    from medimg_spark.config import load_config

    opts = ReadOptions.parse(options, source)
    paths = [_local_input(opts.path)]
    cfg = load_config(opts.config)
    icfg = _ingest_config(opts, cfg.ingest)
    run_id = opts.run_id or new_run_id("read")
    labels: LabelsCSV | None = read_labels(opts.labels) if opts.labels else None
    hook = _deidentifier(opts, cfg, run_id)
    ctx = FileContext(
        run_id=run_id,
        crash_dir=os.path.join(tempfile.gettempdir(), "medimg-crash", run_id),
        default_modality=icfg.default_modality,
        max_decompressed_bytes=icfg.max_decompressed_bytes,
        max_decoded_bytes=icfg.max_decoded_bytes,
        max_file_bytes=icfg.max_file_bytes,
        max_seconds_per_file=icfg.max_seconds_per_file,
        labels_by_path=labels.by_path if labels else {},
        labels_by_sha=labels.by_sha if labels else {},
        label_from_parent_dir=icfg.label_from_parent_dir,
        deidentify=hook,
        split_rule=icfg.split,
    )
    plan = ReadPlan(
        paths=paths,
        table=opts.table,
        frames=opts.frames,
        dicom_only=source == "dicom",
        ctx=ctx,
        flush_bytes=icfg.output_batch_bytes,
        parallelism=opts.parallelism or os.cpu_count() or 1,
    )
    return opts, plan


class FilesPartition(InputPartition):
    """One read task: local files (Hadoop path string, size) and files quarantined without reading."""

    def __init__(self, index: int, files: list[tuple[str, int]], unread: list[UnreadFile]) -> None:
        super().__init__(index)
        self.index = index
        self.files = files
        self.unread = unread


def split_files(files: dict[str, int], unread: list[UnreadFile], plan: ReadPlan) -> list[FilesPartition]:
    """Spread listed files over tasks.

    Empty files and files over ``max_file_bytes`` become quarantine rows without being read (the rows
    ingest writes for them); the non-empty files are split in listing order into
    :func:`~medimg_spark.io.planning.task_slices` tasks (each file weighing its size plus an open
    cost), or ``plan.files_per_task`` files per task.
    """
    limit = plan.ctx.max_file_bytes
    unread = list(unread)
    empty_sha = hashlib.sha256(b"").hexdigest()
    rows: list[tuple[str, int]] = []
    for path, size in files.items():
        if not size:
            unread.append((path, empty_sha, 0, EmptyFileError.__name__, EMPTY_MESSAGE))
            continue
        if size > limit:
            unread.append((path, None, size, FileTooLargeError.__name__, too_large_message(size, limit)))
        rows.append((path, size))
    if plan.files_per_task:
        slices = max(1, -(-len(rows) // plan.files_per_task))
    else:
        slices = task_slices([size for _, size in rows], plan.parallelism)
    readable = [(p, s) for p, s in rows if s <= limit]
    if plan.files_per_task:
        # contiguous slices of equal count, as SparkContext.parallelize cuts a list
        bounds = [(i * len(readable)) // slices for i in range(slices + 1)]
        groups = [readable[bounds[i] : bounds[i + 1]] for i in range(slices)]
    else:
        groups = balance_slices(readable, slices)
    return [FilesPartition(i, group, unread if i == 0 else []) for i, group in enumerate(groups)]


def balance_slices(rows: list[tuple[str, int]], slices: int) -> list[list[tuple[str, int]]]:
    """Deal files into ``slices`` tasks of about equal weight (size plus the open cost), largest first.

    Greedy longest-processing-time assignment: a folder of large files (a multi-frame series, a set of
    ultrasound cines that OCR reads frame by frame) listed together is spread over the tasks instead of
    landing in one task that every other core then waits for. Deterministic; each task keeps listing order.
    """
    import heapq

    from medimg_spark.io.planning import LOCAL_OPEN_COST

    slices = max(1, slices)
    members: list[list[int]] = [[] for _ in range(slices)]
    # (load, task): the least-loaded task, ties to the lowest index, in O(log slices) per file (a scan of
    # every task per file made planning quadratic: 65 CPU-s at 100k files, docs/scaling.md).
    heap = [(0, k) for k in range(slices)]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i][1], i))
    for i in order:
        load, k = heap[0]
        heapq.heapreplace(heap, (load + rows[i][1] + LOCAL_OPEN_COST, k))
        members[k].append(i)
    return [[rows[i] for i in sorted(m)] for m in members]


def _unread_row(item: UnreadFile, run_id: str, paths: Any = None) -> dict[str, Any]:
    """The quarantine row of a file not read; ``paths``: the de-identification hook (path pseudonyms)."""
    path, sha, size, error_class, message = item
    if paths is not None:
        path, message = paths.pseudonymize_path(path), paths.scrub(message, path)
    return {
        "_kind": QUARANTINE,
        "source_path": path,
        "file_sha256": sha,
        "size_bytes": size,
        "frame_index": None,
        "stage": "read",
        "step": None,
        "error_class": error_class,
        "error_message": message,
        "ingest_run_id": run_id,
    }


def _dicom_only(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Replace the rows of each file whose content is not DICOM by one NotDicomError quarantine row.

    :func:`process_files` yields the rows of one file consecutively; they are held until the next
    file starts.
    """

    def settle(group: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        decoded = [r for r in group if r["_kind"] in (IMAGE, INSTANCE)]
        fmt = next((r.get("source_format") for r in decoded if r.get("source_format") != "dicom"), None)
        if fmt is None:
            yield from group
            return
        first = next((r for r in group if r["_kind"] == INSTANCE), decoded[0])
        size = first.get("size_bytes")
        yield {
            "_kind": QUARANTINE,
            "source_path": first["source_path"],
            "file_sha256": first["file_sha256"],
            "size_bytes": size,
            "frame_index": None,
            "stage": "parse",
            "step": None,
            "error_class": NotDicomError.__name__,
            "error_message": f"content is {fmt}, not DICOM; read it with spark.read.format('medimg')",
            "ingest_run_id": first["ingest_run_id"],
        }

    group: list[dict[str, Any]] = []
    for row in rows:
        if group and row["source_path"] != group[0]["source_path"]:
            yield from settle(group)
            group = []
        group.append(row)
    if group:
        yield from settle(group)


def read_partition(partition: FilesPartition, plan: ReadPlan) -> Iterator[pa.RecordBatch]:
    """Decode one task's files into Arrow batches of the plan's table (in a Spark task)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from medimg_spark.worker import configure_worker

    configure_worker()  # one OpenCV thread per task, the allocator keeps frame-sized blocks
    ctx = plan.ctx
    schema = SCHEMAS[plan.table]
    arrow_schema = to_arrow_schema(schema, timezone="UTC")
    guard = CrashGuard(ctx.crash_dir, f"{ctx.run_id}-p{partition.index}") if ctx.crash_dir else None
    rows: Iterator[dict[str, Any]] = process_files(((p, None) for p, _ in partition.files), ctx, guard)
    if plan.dicom_only:
        rows = _dicom_only(rows)
    kind = _KIND_OF_TABLE.get(plan.table)
    stamp = dt.datetime.now(dt.UTC)

    def wanted(all_rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in all_rows:
            if kind is not None and row["_kind"] != kind:
                continue
            if plan.frames == "first" and row["_kind"] == IMAGE and row.get("frame_index") != 0:
                continue
            if kind == QUARANTINE:
                row["quarantined_at"] = stamp
            yield staged_row(row) if plan.table == STAGED else row

    unread = (_unread_row(u, ctx.run_id, path_hook(ctx)) for u in partition.unread)
    pending: list[dict[str, Any]] = []
    size = 0
    for row in wanted(_chain(unread, rows)):
        pending.append(row)
        size += len(row.get("pixels") or b"") + 512
        if size >= plan.flush_bytes:
            yield rows_to_batch(pending, arrow_schema)
            pending, size = [], 0
    if pending:
        yield rows_to_batch(pending, arrow_schema)
    flush = getattr(ctx.deidentify, "flush", None)
    if flush is not None:
        flush(f"p{partition.index}-{secrets.token_hex(3)}")
    if ctx.crash_dir:
        with contextlib.suppress(OSError):  # empty once every task of the read cleared its mark
            os.rmdir(ctx.crash_dir)


def staged_row(row: dict[str, Any]) -> dict[str, Any]:
    """A decoded union row as a :data:`STAGED_SCHEMA` row (image rows as they are, others as JSON)."""
    if row["_kind"] == IMAGE:
        return row
    side = {f.name: row.get(f.name) for f in SIDE_SCHEMA.fields}
    return {
        "_kind": row["_kind"],
        "file_sha256": row.get("file_sha256"),
        "source_path": row.get("source_path"),
        "pixels": json.dumps(side, ensure_ascii=False).encode("utf-8"),
    }


def _chain(*parts: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for part in parts:
        yield from part


def listed_files(listing: Listing) -> tuple[dict[str, int], list[UnreadFile]]:
    """The listing's files and the quarantine rows of its problems (as ingest writes them)."""
    return dict(listing.files), problem_rows(listing)


class _BatchReader(DataSourceReader):
    def __init__(self, plan: ReadPlan) -> None:
        self.plan = plan

    def partitions(self) -> Sequence[InputPartition]:
        files, unread = listed_files(list_local(self.plan.paths))
        return split_files(files, unread, self.plan)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, FilesPartition)
        yield from read_partition(partition, self.plan)


# ---------------------------------------------------------------------------------------------
# Streaming: files of a folder ordered by (change time, path); an offset is the last key read.
# ---------------------------------------------------------------------------------------------

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def _change_time(path: str) -> int:
    """``st_ctime_ns`` of a listed path (not following links); 0 when it cannot be stat'ed."""
    local = local_path(path)
    try:
        return os.lstat(local).st_ctime_ns
    except (OSError, ValueError):
        pass
    try:  # a name that is not UTF-8: the listing shows its bytes as \\xNN escapes
        raw = _ESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), local)
        return os.lstat(raw).st_ctime_ns
    except (OSError, ValueError):
        return 0


@dataclass(order=True, frozen=True)
class _Entry:
    ctime_ns: int
    path: str
    size: int | None = field(compare=False, default=None)
    unread: UnreadFile | None = field(compare=False, default=None)


def _offset(entry: _Entry | None) -> dict[str, Any]:
    if entry is None:
        return {"version": 1, "ctime_ns": -1, "path": ""}
    return {"version": 1, "ctime_ns": entry.ctime_ns, "path": entry.path}


def _key(offset: dict[str, Any]) -> tuple[int, str]:
    return int(offset["ctime_ns"]), str(offset["path"])


class _StreamReader(DataSourceStreamReader):
    """Micro-batches of the files that appeared in the watched folder.

    Every listed entry is keyed by ``(change time in ns, path)``; an offset is the key of the last
    entry of a batch, and a batch is every entry with ``start < key <= end``. A restart replays a
    logged batch by listing again and taking the same key range, so a file is neither read twice nor
    skipped. Only files whose change time is ``settle_seconds`` old are admitted, so that a file
    appearing while the folder is listed cannot fall behind an offset already handed out.
    Limitations: a file changed in place (written, chmod'ed, renamed) after it was read gets a new
    change time and is read again; write files elsewhere and move them into the folder. A listed
    problem that cannot be stat'ed at all (it vanished) is keyed at change time 0, so it is
    quarantined only by the first batch that sees it.
    """

    def __init__(self, plan: ReadPlan, opts: ReadOptions, max_files: int | None) -> None:
        self.plan = plan
        self.settle_ns = int(opts.settle_seconds * 1e9)
        self.max_files = max_files
        self.target: tuple[int, str] | None = None

    def _entries(self, settled: bool) -> list[_Entry]:
        now = time.time_ns()
        files, unread = listed_files(list_local(self.plan.paths))
        out = [_Entry(_change_time(p), p, size=s) for p, s in files.items()]
        out += [_Entry(_change_time(u[0]), u[0], unread=u) for u in unread]
        if settled:
            out = [e for e in out if e.ctime_ns <= now - self.settle_ns]
        return sorted(out)

    def initialOffset(self) -> dict:
        return _offset(None)

    def getDefaultReadLimit(self) -> Any:
        from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxFiles

        return ReadMaxFiles(self.max_files) if self.max_files else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        entries = self._entries(settled=True)
        self.target = (entries[-1].ctime_ns, entries[-1].path) if entries else (-1, "")

    def latestOffset(self, start: dict | None = None, limit: Any = None) -> dict:
        from pyspark.sql.streaming.datasource import ReadMaxFiles

        begin = _key(start or self.initialOffset())
        new = [e for e in self._entries(settled=True) if (e.ctime_ns, e.path) > begin]
        if self.target is not None:
            new = [e for e in new if (e.ctime_ns, e.path) <= self.target]
        if isinstance(limit, ReadMaxFiles):
            new = new[: max(1, limit.max_files)]
        elif limit is None and self.max_files:
            new = new[: self.max_files]
        return _offset(new[-1]) if new else dict(start or self.initialOffset())

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        lo, hi = _key(start), _key(end)
        if lo >= hi:
            return []
        batch = [e for e in self._entries(settled=False) if lo < (e.ctime_ns, e.path) <= hi]
        files = {e.path: e.size or 0 for e in batch if e.unread is None}
        unread = [e.unread for e in batch if e.unread is not None]
        if not files and not unread:
            return []
        return split_files(files, unread, self.plan)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, FilesPartition)
        yield from read_partition(partition, self.plan)

    def commit(self, end: dict) -> None:
        """Nothing to release: offsets are recomputed from the folder."""


def _stream_reader_class() -> type:
    try:
        from pyspark.sql.streaming.datasource import SupportsTriggerAvailableNow
    except ImportError:  # older pyspark: availableNow falls back to reading what latestOffset finds
        return _StreamReader
    return type("MedimgStreamReader", (_StreamReader, SupportsTriggerAvailableNow), {})


class MedimgDataSource(DataSource):
    """``spark.read.format("medimg")``: every supported format; see the module docstring for options."""

    SOURCE = "medimg"

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self.opts, self.plan = make_plan(dict(options), self.SOURCE)

    @classmethod
    def name(cls) -> str:
        return cls.SOURCE

    def schema(self) -> StructType:
        return SCHEMAS[self.opts.table]

    def reader(self, schema: StructType) -> DataSourceReader:
        return _BatchReader(self.plan)

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        reader: DataSourceStreamReader = _stream_reader_class()(
            self.plan, self.opts, self.opts.max_files_per_trigger
        )
        return reader


class _ListedReader(DataSourceReader):
    """Reads a fixed list of files (no listing at planning time)."""

    def __init__(self, plan: ReadPlan, files: dict[str, int]) -> None:
        self.plan = plan
        self.files = files

    def partitions(self) -> Sequence[InputPartition]:
        return split_files(self.files, [], self.plan)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, FilesPartition)
        yield from read_partition(partition, self.plan)


class FilesDataSource(DataSource):
    """The ``medimg`` reader over a fixed file list with a pre-built :class:`ReadPlan` (no options).

    Not registered itself: :func:`register_files_source` registers a subclass per read that carries
    the plan and the files, which Spark pickles with the class into its Python workers.
    """

    SOURCE = "medimg_files"
    PLAN: ReadPlan
    FILES: dict[str, int]

    @classmethod
    def name(cls) -> str:
        return cls.SOURCE

    def schema(self) -> StructType:
        return SCHEMAS[self.PLAN.table]

    def reader(self, schema: StructType) -> DataSourceReader:
        return _ListedReader(self.PLAN, self.FILES)


def read_files(spark: SparkSession, plan: ReadPlan, files: dict[str, int]) -> DataFrame:
    """The rows of ``plan.table`` decoded from ``files``, one task per :func:`split_files` partition.

    What the ``medimg`` data source's reader does, as a ``mapInArrow`` over ``spark.range`` (task ``i``
    reads partition ``i``): the plan and the file list travel pickled in the function's closure (as a
    UDF's do: the de-identification key never appears in the query plan), and no Python worker runs
    at planning time. A Python data source's read starts three planning workers on the driver, one
    after the other (``lookup_data_sources``, ``create_data_source``, ``plan_data_source_read``, each
    a fresh interpreter unpickling the source; in benchmarks/run.py's N = 2,000 spark run the first of
    them started about 13 s before the first read task, on 2 cores).
    """
    parts = split_files(files, [], plan)
    schema = SCHEMAS[plan.table]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for index in batch.column(0).to_pylist():
                yield from read_partition(parts[index], plan)

    return spark.range(len(parts), numPartitions=len(parts)).mapInArrow(run, schema)


def register_files_source(spark: SparkSession, plan: ReadPlan, files: dict[str, int]) -> str:
    """Register a data source that reads ``files`` with ``plan``; return its format name.

    This is how ``medimg ingest`` decodes its listed local files: its run's per-file context (limits,
    labels, crash guard folder and the de-identification hook the CLI built, key included) is pickled
    with the registered class, as a UDF's closure is, and never appears in the query plan, which shows
    only the format name. The files are read as given (listing order, sizes for the splits); empty
    files and files over ``max_file_bytes`` get the rows :func:`split_files` gives them.
    """
    name = f"medimg_files_{secrets.token_hex(8)}"
    source = type(
        f"FilesDataSource_{name}",
        (FilesDataSource,),
        {"SOURCE": name, "PLAN": plan, "FILES": dict(files), "__module__": __name__},
    )
    spark.dataSource.register(source)
    return name


class DicomDataSource(MedimgDataSource):
    """``spark.read.format("dicom")``: DICOM content only; other formats are quarantined (NotDicomError)."""

    SOURCE = "dicom"


def register(spark: SparkSession) -> None:
    """Register the ``medimg`` and ``dicom`` data sources with ``spark`` (idempotent)."""
    for source in (MedimgDataSource, DicomDataSource):
        spark.dataSource.register(source)
