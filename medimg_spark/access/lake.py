"""Lake tables under Parquet modular encryption: per-file encryption, the table manifest, decryption.

No Spark here: :mod:`medimg_spark.access.spark` distributes these functions over the files.

Each protected file has an encrypted footer under the table's *zone* key; every column is
encrypted, the columns of a protected group (``column_groups``) under that group's key and the
others under the zone key, so a reader holding only the zone key reads the unprotected columns
and nothing else, and a reader without the zone key reads nothing (not even the schema). The
table's manifest ``<table>/_ACCESS_PROTECTED.json`` lists, per file, the key ids (``name@vN``)
it was written with, never a key.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from medimg_spark.access.errors import KeyUnavailableError, LakeProtectionError, UnknownColumnError
from medimg_spark.access.kms import ReleasedKeys, connection_config, crypto_factory
from medimg_spark.access.policy import AccessPolicy, LakeStatus, RowConditions

__all__ = [
    "MANIFEST",
    "FileKeys",
    "FileTask",
    "TableManifest",
    "data_files",
    "decrypt_file",
    "is_encrypted",
    "lake_status",
    "protect_file",
    "read_manifest",
]

MANIFEST = "_ACCESS_PROTECTED.json"
SPARK_ROW_METADATA = b"org.apache.spark.sql.parquet.row.metadata"
_ENCRYPTED_MAGIC = b"PARE"


def lake_status(lake: str | os.PathLike[str]) -> LakeStatus:
    """``identified`` when the lake carries ingest's IDENTIFIED marker (``--keep-phi``), else ``deidentified``."""
    from medimg_spark.io.ingest import IDENTIFIED_MARKER

    return "identified" if (Path(lake) / IDENTIFIED_MARKER).exists() else "deidentified"


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether a Parquet file has an encrypted footer (it ends with ``PARE``, not ``PAR1``)."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return fh.read(4) == _ENCRYPTED_MAGIC


def data_files(table_dir: str | os.PathLike[str]) -> list[str]:
    """The table's Parquet data files, relative to ``table_dir`` (hidden and ``_`` entries skipped)."""
    root = Path(table_dir)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for f in sorted(filenames):
            if f.endswith(".parquet") and not f.startswith((".", "_")):
                found.append(os.path.relpath(os.path.join(dirpath, f), root))
    return found


def partition_values(rel: str) -> dict[str, str]:
    """Hive partition values from a relative file path (``modality=CT/part-….parquet``)."""
    out = {}
    for part in Path(rel).parts[:-1]:
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out


@dataclass(frozen=True)
class FileKeys:
    """The key ids one file is encrypted with: the footer (zone) key and ``key id -> columns``."""

    footer: str
    columns: dict[str, list[str]]
    rows: int = 0

    @property
    def ids(self) -> set[str]:
        """Every key id of the file."""
        return {self.footer, *self.columns}


@dataclass(frozen=True)
class FileTask:
    """Encrypt ``src`` into ``dst`` (``rel`` is its path in the table).

    Attributes:
        zone_key: the current zone key id (footer and unprotected columns).
        group_keys: ``current group key id -> that group's columns``.
    """

    src: str
    dst: str
    rel: str
    zone_key: str
    group_keys: dict[str, list[str]]


@dataclass(frozen=True)
class FileResult:
    """One encrypted file: its path in the table, its keys and row count."""

    rel: str
    keys: FileKeys
    rows: int
    columns: list[str]
    spark_schema: str | None


def _decryption(keys: ReleasedKeys) -> pe.FileDecryptionProperties:
    return crypto_factory(keys).file_decryption_properties(
        connection_config(keys), pe.DecryptionConfiguration()
    )


def protect_file(task: FileTask, keys: ReleasedKeys) -> FileResult:
    """Encrypt one file (decrypting it first when it is already protected: re-keying).

    Raises:
        LakeProtectionError: the file cannot be read or written.
    """
    try:
        props = _decryption(keys) if is_encrypted(task.src) else None
        table = pq.read_table(task.src, decryption_properties=props)
    except Exception as exc:
        raise LakeProtectionError(f"cannot read {task.src} ({type(exc).__name__}: {exc})") from None
    names = table.column_names
    grouped = {k: [c for c in cols if c in names] for k, cols in task.group_keys.items()}
    grouped = {k: cols for k, cols in grouped.items() if cols}
    in_groups = {c for cols in grouped.values() for c in cols}
    column_keys = {task.zone_key: [c for c in names if c not in in_groups], **grouped}
    column_keys = {k: v for k, v in column_keys.items() if v}
    config = pe.EncryptionConfiguration(
        footer_key=task.zone_key,
        column_keys=column_keys,
        encryption_algorithm="AES_GCM_V1",
        plaintext_footer=False,
        double_wrapping=True,
    )
    enc = crypto_factory(keys).file_encryption_properties(connection_config(keys), config)
    Path(task.dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        pq.write_table(table, task.dst, encryption_properties=enc, compression="zstd")
    except Exception as exc:
        raise LakeProtectionError(f"cannot write {task.dst} ({type(exc).__name__}: {exc})") from None
    meta = table.schema.metadata or {}
    spark_schema = meta.get(SPARK_ROW_METADATA)
    return FileResult(
        rel=task.rel,
        keys=FileKeys(task.zone_key, column_keys),
        rows=table.num_rows,
        columns=names,
        spark_schema=spark_schema.decode() if spark_schema else None,
    )


@dataclass
class TableManifest:
    """``<table>/_ACCESS_PROTECTED.json``: zone, lake status, columns and every file's key ids."""

    table: str
    zone: str
    lake: LakeStatus
    columns: list[str]
    partition_columns: list[str]
    spark_schema: str | None
    files: dict[str, FileKeys] = field(default_factory=dict)
    rows: int = 0
    updated_at: str = ""

    @property
    def key_ids(self) -> set[str]:
        """Every key id any file of the table uses."""
        return {k for f in self.files.values() for k in f.ids}

    @property
    def all_columns(self) -> list[str]:
        """Data columns then partition columns (the table's readable columns)."""
        return [*self.columns, *(c for c in self.partition_columns if c not in self.columns)]

    def to_json(self) -> dict[str, Any]:
        """The manifest's JSON."""
        return {
            "format": "medimg-access-protected",
            "version": 1,
            "table": self.table,
            "zone": self.zone,
            "lake": self.lake,
            "columns": self.columns,
            "partition_columns": self.partition_columns,
            "spark_schema": self.spark_schema,
            "rows": self.rows,
            "updated_at": self.updated_at,
            "files": {
                rel: {"footer": k.footer, "columns": k.columns, "rows": k.rows}
                for rel, k in sorted(self.files.items())
            },
        }

    def write(self, table_dir: str | os.PathLike[str]) -> None:
        """Write the manifest into ``table_dir``."""
        self.updated_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        path = Path(table_dir) / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)


def read_manifest(table_dir: str | os.PathLike[str]) -> TableManifest | None:
    """The table's manifest (None when the table is not protected)."""
    path = Path(table_dir) / MANIFEST
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return TableManifest(
        table=d["table"],
        zone=d["zone"],
        lake=d["lake"],
        columns=list(d["columns"]),
        partition_columns=list(d["partition_columns"]),
        spark_schema=d.get("spark_schema"),
        files={
            rel: FileKeys(v["footer"], {k: list(c) for k, c in v["columns"].items()}, int(v.get("rows", 0)))
            for rel, v in d["files"].items()
        },
        rows=int(d.get("rows", 0)),
        updated_at=d.get("updated_at", ""),
    )


def merge_results(
    old: TableManifest | None,
    results: Iterable[FileResult],
    *,
    table: str,
    zone: str,
    lake: LakeStatus,
    keep: Iterable[str],
    partition_columns: list[str],
) -> TableManifest:
    """The manifest after protecting: kept files' entries from ``old`` plus the new results."""
    files = {rel: old.files[rel] for rel in keep if old and rel in old.files}
    columns = list(old.columns) if old else []
    spark_schema = old.spark_schema if old else None
    for r in results:
        files[r.rel] = FileKeys(r.keys.footer, r.keys.columns, r.rows)
        columns.extend(c for c in r.columns if c not in columns)
        spark_schema = spark_schema or r.spark_schema
    rows = sum(f.rows for f in files.values())
    return TableManifest(table, zone, lake, columns, partition_columns, spark_schema, files, rows)


def zone_tables(policy: AccessPolicy, lake: Path, tables: Iterable[str] | None = None) -> dict[str, str]:
    """``table -> zone`` of the lake's tables to protect: ``tables``, else every zone table present.

    Raises:
        UnknownColumnError: a table asked for is in no zone for this lake, or not in the lake.
    """
    status = lake_status(lake)
    zoned = {t: z for z, zone in policy.zones.items() if zone.lake in ("any", status) for t in zone.tables}
    if not tables:
        return {t: z for t, z in zoned.items() if (lake / t).is_dir()}
    for t in tables:
        if t not in zoned:
            raise UnknownColumnError(
                f"--table {t}: not in any zone of the policy for a {status} lake; add it to a zone's tables "
                f"or choose from {', '.join(zoned)}"
            )
        if not (lake / t).is_dir():
            raise UnknownColumnError(f"--table {t}: the lake {lake} has no table {t!r}")
    return {t: zoned[t] for t in tables}


def swap_in(table_dir: Path, staging: Path) -> None:
    """Replace ``table_dir`` by ``staging``: two renames, the old copy removed last.

    A crash between the renames leaves ``.<table>.access-old``; :func:`recover` puts it back.
    """
    old = table_dir.with_name(f".{table_dir.name}.access-old")
    if old.exists():
        shutil.rmtree(old)
    os.rename(table_dir, old)
    os.rename(staging, table_dir)
    shutil.rmtree(old)


def recover(table_dir: Path) -> None:
    """Undo an interrupted swap (the table is missing, its old copy is there); drop stale staging."""
    old = table_dir.with_name(f".{table_dir.name}.access-old")
    if old.exists() and not table_dir.exists():
        os.rename(old, table_dir)
    for stale in table_dir.parent.glob(f".{table_dir.name}.access-staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


def copy_kept(table_dir: Path, staging: Path, redo: set[str]) -> list[str]:
    """Hard-link (else copy) into ``staging`` every entry of the table not being rewritten.

    Spark's ``.crc`` checksum files are dropped: they would not match the rewritten files.

    Returns:
        The kept data files (relative paths).
    """
    kept = []
    for dirpath, dirnames, filenames in os.walk(table_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            src = Path(dirpath) / f
            rel = os.path.relpath(src, table_dir)
            if f.endswith(".crc") or rel in redo or f == MANIFEST:
                continue
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            if f.endswith(".parquet") and not f.startswith((".", "_")):
                kept.append(rel)
    return kept


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReadPlan:
    """What one secure read needs in the executors (pickled with the data source; no Spark conf).

    Attributes:
        table_dir: the table folder.
        files: relative paths of the files to read.
        columns: the output columns, in order.
        partition_columns: which of them come from the path.
        rows: the row conditions to apply.
        keys: the released master keys.
        principal: who reads (in error messages).
    """

    table_dir: str
    files: tuple[str, ...]
    columns: tuple[str, ...]
    partition_columns: tuple[str, ...]
    rows: RowConditions
    keys: ReleasedKeys
    principal: str
    table: str


def _row_mask(table: pa.Table, rows: RowConditions) -> pa.Array | None:
    mask = None
    for col, allowed in rows.values.items():
        m = pc.is_in(pc.cast(table[col], pa.string()), value_set=pa.array(allowed, pa.string()))
        m = pc.fill_null(m, False)
        mask = m if mask is None else pc.and_(mask, m)
    for col in rows.flags:
        m = pc.fill_null(pc.cast(table[col], pa.bool_()), False)
        mask = m if mask is None else pc.and_(mask, m)
    return mask


def decrypt_file(plan: ReadPlan, rel: str) -> pa.Table:
    """Read the plan's columns of one file with the released keys, rows filtered by the conditions.

    Raises:
        KeyUnavailableError: the file needs a key (version) that was not released.
    """
    parts = partition_values(rel)
    wanted = [c for c in plan.columns if c not in plan.partition_columns]
    extra = [c for c in plan.rows.columns if c not in plan.columns and c not in plan.partition_columns]
    try:
        table = pq.read_table(
            os.path.join(plan.table_dir, rel),
            columns=[*wanted, *extra],
            decryption_properties=_decryption(plan.keys),
        )
    except KeyUnavailableError:
        raise
    except Exception as exc:
        text = str(exc)
        if "not released" in text or "KeyUnavailableError" in text or "InvalidTag" in text:
            raise KeyUnavailableError(
                f"principal {plan.principal!r} cannot decrypt {plan.table}/{rel}: {text.splitlines()[0][:300]}"
            ) from None
        raise
    for name in plan.partition_columns:
        if name in plan.columns or name in plan.rows.columns:
            table = table.append_column(name, pa.array([parts.get(name)] * table.num_rows, pa.string()))
    mask = _row_mask(table, plan.rows)
    if mask is not None:
        table = table.filter(mask)
    return table.select(list(plan.columns))


def iter_batches(plan: ReadPlan, files: Iterable[str]) -> Iterator[pa.RecordBatch]:
    """Decrypted record batches of ``files``."""
    for rel in files:
        yield from decrypt_file(plan, rel).to_batches()


def check_columns(manifest: TableManifest, columns: list[str] | None) -> None:
    """Refuse columns the table does not have (before any key is asked for).

    Raises:
        UnknownColumnError: a requested column is not in the table.
    """
    unknown = [c for c in columns or () if c not in manifest.all_columns]
    if unknown:
        raise UnknownColumnError(
            f"table {manifest.table!r} has no column(s) {unknown}; choose from {', '.join(manifest.all_columns)}"
        )


def summary_counts(manifest: TableManifest) -> Mapping[str, int]:
    """Files per key id (for ``medimg access protect`` output)."""
    counts: dict[str, int] = {}
    for keys in manifest.files.values():
        for k in keys.ids:
            counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))
