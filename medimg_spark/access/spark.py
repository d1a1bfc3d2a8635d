"""Spark side of access control: ``protect`` (encrypt a lake's tables as a Spark job) and secure reads.

:func:`protect_lake` rewrites each table of the policy's zones file by file with Parquet modular
encryption, the files distributed over the executors (the master keys travel in the task closure,
never in Hadoop or Spark conf), into a staging folder swapped in with two renames.

:func:`read_table` is the secure read: on the driver, the KMS decides and audits *before* any data
is touched (a denied column or zone raises :class:`AccessDeniedError` naming the principal, table,
column and rule); an allowed read registers a per-read Python data source whose reader object
carries only the released keys, and the executors decrypt with pyarrow and apply the role's row
conditions.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.types import StringType, StructField, StructType

from medimg_spark.access.errors import LakeProtectionError, UnknownColumnError
from medimg_spark.access.kms import Kms, Release, ReleasedKeys, parse_key_id, resolve_kms_dir
from medimg_spark.access.lake import (
    FileKeys,
    FileResult,
    FileTask,
    ReadPlan,
    TableManifest,
    check_columns,
    copy_kept,
    data_files,
    is_encrypted,
    iter_batches,
    lake_status,
    merge_results,
    partition_values,
    protect_file,
    read_manifest,
    recover,
    swap_in,
    zone_tables,
)
from medimg_spark.access.policy import group_key_name, zone_key_name

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "MedimgSecureDataSource",
    "ProtectedTable",
    "SecureRead",
    "load_secure",
    "protect_lake",
    "read_table",
    "register",
    "secure_read",
]


@dataclass
class ProtectedTable:
    """The outcome of protecting one table.

    Attributes:
        table: the table.
        zone: its zone.
        status: ``protected`` (plain files encrypted now), ``rekeyed`` (protected files re-encrypted:
            ``--rekey`` or a policy change of the table's zone or column groups), or ``unchanged``.
        files_encrypted: files written now.
        files_kept: files already protected under current keys, kept as they were.
        rows: rows in the table's protected files.
        keys: the current key ids the new files use.
    """

    table: str
    zone: str
    status: str
    files_encrypted: int
    files_kept: int
    rows: int
    keys: list[str] = field(default_factory=list)


def _partition_columns(files: Sequence[str]) -> list[str]:
    cols: list[str] = []
    for rel in files:
        cols.extend(k for k in partition_values(rel) if k not in cols)
    return cols


def _name(kid: str) -> str:
    return parse_key_id(kid)[0]


def _layout(keys: FileKeys) -> tuple[str, dict[str, frozenset[str]]]:
    """A file's footer key name and ``key name -> columns`` (versions ignored)."""
    return _name(keys.footer), {_name(k): frozenset(c) for k, c in keys.columns.items()}


def _expected_layout(
    keys: FileKeys, zone_key: str, group_keys: dict[str, list[str]]
) -> tuple[str, dict[str, frozenset[str]]]:
    """The layout the current policy gives a file with these columns."""
    columns = {c for cols in keys.columns.values() for c in cols}
    grouped = {_name(k): frozenset(set(cols) & columns) for k, cols in group_keys.items()}
    grouped = {k: v for k, v in grouped.items() if v}
    rest = frozenset(columns - {c for v in grouped.values() for c in v})
    layout = {**({_name(zone_key): rest} if rest else {}), **grouped}
    return _name(zone_key), layout


def _protect_table(
    spark: SparkSession, lake: Path, table: str, zone: str, kms: Kms, *, rekey: bool
) -> ProtectedTable:
    policy = kms.policy
    status = lake_status(lake)
    table_dir = lake / table
    recover(table_dir)
    groups = policy.groups_of(table)
    names = [zone_key_name(zone), *(group_key_name(table, g) for g in groups)]
    current = kms.current_ids(names)
    zone_key = current[zone_key_name(zone)]
    group_keys = {current[group_key_name(table, g)]: cols for g, cols in groups.items()}
    old = read_manifest(table_dir)
    files = data_files(table_dir)
    wanted_ids = set(current.values())
    redo = []
    for rel in files:
        known = old.files.get(rel) if old else None
        if not is_encrypted(table_dir / rel):
            redo.append(rel)
        elif known is None:
            raise LakeProtectionError(
                f"{table_dir / rel} is encrypted but not in the table's manifest; restore the manifest "
                "or remove the file"
            )
        elif _layout(known) != _expected_layout(known, zone_key, group_keys):
            redo.append(rel)  # the policy moved the table to another zone or changed its column groups
        elif rekey and not known.ids <= wanted_ids:
            redo.append(rel)
    if not redo:
        return ProtectedTable(
            table, zone, "unchanged", 0, len(files), old.rows if old else 0, sorted(wanted_ids)
        )
    n_rekeyed = sum(1 for r in redo if is_encrypted(table_dir / r))
    keys = kms.admin_keys(names, action="admin-key-release", target=str(table_dir))
    staging = lake / f".{table}.access-staging-{secrets.token_hex(4)}"
    tasks = [FileTask(str(table_dir / r), str(staging / r), r, zone_key, group_keys) for r in redo]
    try:
        kept = copy_kept(table_dir, staging, set(redo))
        sc = spark.sparkContext
        n = max(1, min(len(tasks), sc.defaultParallelism * 2))
        results: list[FileResult] = sc.parallelize(tasks, n).map(partial(protect_file, keys=keys)).collect()
        manifest = merge_results(
            old,
            results,
            table=table,
            zone=zone,
            lake=status,
            keep=kept,
            partition_columns=_partition_columns(files),
        )
        manifest.write(staging)
        swap_in(table_dir, staging)
    except Exception as exc:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, LakeProtectionError):
            raise
        raise LakeProtectionError(
            f"protecting {table_dir} failed, the table is unchanged: {str(exc).splitlines()[0][:500]}"
        ) from None
    kms.audit.append(
        "protect-table",
        target=str(table_dir),
        details={
            "zone": zone,
            "files_encrypted": len(results),
            "files_kept": len(kept),
            "keys": sorted(wanted_ids),
        },
    )
    return ProtectedTable(
        table,
        zone,
        "rekeyed" if n_rekeyed else "protected",
        len(results),
        len(kept),
        manifest.rows,
        sorted(wanted_ids),
    )


def protect_lake(
    spark: SparkSession,
    lake: str | os.PathLike[str],
    kms: Kms,
    *,
    tables: Sequence[str] | None = None,
    rekey: bool = False,
) -> list[ProtectedTable]:
    """Encrypt the lake's tables that the policy's zones list (idempotent: protected files are kept).

    Args:
        spark: the session (the files are encrypted in its executors).
        lake: a local lake directory.
        kms: the KMS (its policy decides zones and column groups; its keys encrypt).
        tables: only these tables (default: every zone table present in the lake).
        rekey: also re-encrypt files written under older key versions (after a revoke).

    Raises:
        UnknownColumnError: a table asked for is in no zone or not in the lake.
        LakeProtectionError: a file could not be encrypted (that table is left unchanged).
    """
    root = Path(lake)
    chosen = zone_tables(kms.policy, root, tables)
    return [_protect_table(spark, root, t, z, kms, rekey=rekey) for t, z in chosen.items()]


# ---------------------------------------------------------------------- reading


class _FilesPartition(InputPartition):  # type: ignore[misc]
    def __init__(self, files: list[str]) -> None:
        super().__init__(files)
        self.files = files


class _SecureReader(DataSourceReader):  # type: ignore[misc]
    """The reader object: it carries the plan (files, columns, row conditions, released keys)."""

    def __init__(self, plan: ReadPlan, slices: int) -> None:
        self.plan = plan
        self.slices = slices

    def partitions(self) -> Sequence[InputPartition]:
        files = list(self.plan.files)
        n = max(1, min(len(files), self.slices))
        return [_FilesPartition(files[i::n]) for i in range(n)] if files else [_FilesPartition([])]

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, _FilesPartition)
        yield from iter_batches(self.plan, partition.files)


class SecureDataSource(DataSource):  # type: ignore[misc]
    """A per-read data source (registered by :func:`read_table`; class attributes carry the plan)."""

    SOURCE = "medimg_secure"
    PLAN: ReadPlan
    SCHEMA_JSON: str
    SLICES: int = 2

    @classmethod
    def name(cls) -> str:
        return cls.SOURCE

    def schema(self) -> StructType:
        return StructType.fromJson(__import__("json").loads(self.SCHEMA_JSON))

    def reader(self, schema: StructType) -> DataSourceReader:
        return _SecureReader(self.PLAN, self.SLICES)


def _schema(manifest: TableManifest, columns: Sequence[str]) -> StructType:
    import json

    fields: dict[str, StructField] = {}
    if manifest.spark_schema:
        for f in StructType.fromJson(json.loads(manifest.spark_schema)).fields:
            fields[f.name] = StructField(f.name, f.dataType, True, f.metadata)
    for c in manifest.partition_columns:
        fields.setdefault(c, StructField(c, StringType(), True))
    missing = [c for c in columns if c not in fields]
    if missing:
        raise UnknownColumnError(f"table {manifest.table!r}: no Spark type recorded for column(s) {missing}")
    return StructType([fields[c] for c in columns])


@dataclass(frozen=True)
class SecureRead:
    """An allowed read, before Spark runs it: the plan, the Spark schema and the KMS release."""

    plan: ReadPlan
    schema: StructType
    release: Release


def secure_read(
    lake: str | os.PathLike[str],
    table: str,
    *,
    principal: str,
    purpose: str,
    columns: Sequence[str] | None = None,
    kms: Kms | str | os.PathLike[str] | None = None,
) -> SecureRead:
    """Ask the KMS for a read (audited) and build its plan; no Spark, no data read.

    Raises:
        UnknownColumnError: the table is not protected, or a column does not exist.
        AccessDeniedError: the policy denies the principal the table, a column, or the purpose.
    """
    k = kms if isinstance(kms, Kms) else Kms(resolve_kms_dir(kms))
    table_dir = Path(lake) / table
    manifest = read_manifest(table_dir)
    if manifest is None:
        raise UnknownColumnError(
            f"table {table!r} of {lake} is not protected (no manifest); run 'medimg access protect --out {lake}'"
        )
    cols = list(columns) if columns is not None else None
    check_columns(manifest, cols)
    release = k.release(
        principal,
        table,
        cols,
        purpose,
        lake=manifest.lake,
        table_columns=manifest.all_columns,
        key_ids=sorted(manifest.key_ids),
        target=str(table_dir),
    )
    decision = release.decision
    plan = ReadPlan(
        table_dir=str(table_dir),
        files=tuple(sorted(manifest.files)),
        columns=tuple(decision.columns),
        partition_columns=tuple(manifest.partition_columns),
        rows=decision.rows,
        keys=release.keys,
        principal=principal,
        table=table,
    )
    return SecureRead(plan, _schema(manifest, decision.columns), release)


def read_table(
    spark: SparkSession,
    lake: str | os.PathLike[str],
    table: str,
    *,
    principal: str,
    purpose: str,
    columns: Sequence[str] | None = None,
    kms: Kms | str | os.PathLike[str] | None = None,
) -> DataFrame:
    """Read a protected lake table as ``principal`` for ``purpose``.

    The KMS decides and audits first; nothing is read when it denies. The returned DataFrame
    decrypts in the executors with only the released keys and applies the role's row conditions.

    Args:
        spark: the session.
        lake: the lake directory.
        table: the table (``images``, ``instances``, ...).
        principal: who reads.
        purpose: the purpose of use.
        columns: the columns (default: every column the principal may read).
        kms: a :class:`Kms`, a KMS directory, or None for ``$MEDIMG_KMS_DIR``.

    Raises:
        AccessDeniedError: denied (before any data is read), naming principal, table, column and rule.
        UnknownColumnError: the table is not protected or has no such column.
    """
    read = secure_read(lake, table, principal=principal, purpose=purpose, columns=columns, kms=kms)
    return load_secure(spark, read)


def load_secure(spark: SparkSession, read: SecureRead) -> DataFrame:
    """The DataFrame of an allowed :class:`SecureRead` (a per-read data source carries its plan)."""
    name = f"medimg_secure_{secrets.token_hex(8)}"
    source = type(
        f"SecureDataSource_{name}",
        (SecureDataSource,),
        {
            "SOURCE": name,
            "PLAN": read.plan,
            "SCHEMA_JSON": read.schema.json(),
            "SLICES": max(1, spark.sparkContext.defaultParallelism),
            "__module__": __name__,
        },
    )
    spark.dataSource.register(source)
    return spark.read.format(name).load()


class MedimgSecureDataSource(DataSource):  # type: ignore[misc]
    """``spark.read.format("medimg-secure")``: the secure read with options (see :func:`register`).

    Options: ``principal``, ``purpose`` (required), ``columns`` (comma-separated), ``kms`` (else
    ``$MEDIMG_KMS_DIR``); the path is ``LAKE/TABLE``. The KMS is asked (and audits) once, in Spark's
    planning worker on the driver host, when the schema is resolved; the reader object then carries
    the released keys to the executors. A denial fails the query before any data is read.
    """

    @classmethod
    def name(cls) -> str:
        return "medimg-secure"

    def _read(self) -> SecureRead:
        cached: SecureRead | None = getattr(self, "_secure", None)
        if cached is not None:
            return cached
        opts = {k.lower(): v for k, v in dict(self.options).items()}
        path = opts.get("path", "")
        missing = [k for k in ("principal", "purpose") if not opts.get(k)]
        if missing or not path:
            raise UnknownColumnError(
                f"format('medimg-secure') needs .option('principal', ..), .option('purpose', ..) and "
                f".load('LAKE/TABLE'); missing: {', '.join(missing) or 'the path'}"
            )
        table_dir = Path(path.removeprefix("file:"))
        cols = [c.strip() for c in opts["columns"].split(",")] if opts.get("columns") else None
        read = secure_read(
            table_dir.parent,
            table_dir.name,
            principal=opts["principal"],
            purpose=opts["purpose"],
            columns=cols,
            kms=opts.get("kms"),
        )
        self._secure = read
        return read

    def schema(self) -> StructType:
        return self._read().schema

    def reader(self, schema: StructType) -> DataSourceReader:
        return _SecureReader(self._read().plan, int(dict(self.options).get("slices", 2)))


def register(spark: SparkSession) -> None:
    """Register ``format("medimg-secure")`` with ``spark`` (idempotent)."""
    spark.dataSource.register(MedimgSecureDataSource)


def key_versions(keys: ReleasedKeys) -> dict[str, list[int]]:
    """``key name -> released versions`` (for messages)."""
    out: dict[str, list[int]] = {}
    for kid in keys.ids:
        name, v = parse_key_id(kid)
        out.setdefault(name, []).append(v)
    return out
