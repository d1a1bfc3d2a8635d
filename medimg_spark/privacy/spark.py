"""Distributed de-identification of DICOM files with Spark (:func:`run_deid`).

Files are read with Spark's ``binaryFile`` source and de-identified inside executors
(``mapInArrow``); only audit and quarantine rows (never file contents, never original values)
come back through Spark. Executors write:

- ``out_dir/dicom/<patient pseudonym>/<study uid>/<series uid>/<sop uid>.dcm`` (atomically: a
  temporary file hard-linked into place, so a reader never sees half a file),
- the re-identification vault files under ``vault_dir`` (encrypted, 0700/0600), when given.

The driver then writes ``out_dir/deid_audit`` (Parquet, one row per file and attribute: the
action taken) and appends failures to ``out_dir/quarantine`` (``QUARANTINE_SCHEMA``,
``stage="deid"``). ``out_dir`` and ``vault_dir`` must be POSIX paths visible to every executor
(local disk in local mode, a shared filesystem on a cluster).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite

from medimg_spark.errors import EmptyFileError, IngestFileError, UnsupportedFormatError
from medimg_spark.privacy.config import DeidConfig
from medimg_spark.privacy.engine import Deidentifier, VaultEntry, quiet_pydicom
from medimg_spark.privacy.errors import (
    DeidConfigError,
    DeidFileError,
    DeidProcessingError,
    DuplicateInstanceError,
    MissingIdentifierError,
)
from medimg_spark.privacy.hook import PATH_ATTRIBUTE, PATH_KIND
from medimg_spark.privacy.vault import ensure_private_dir, resolve_vault_key_file, write_vault_file

STAGE = "deid"

RESULT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("kind", pa.string()),
    ("source_path", pa.string()),
    ("file_sha256", pa.string()),
    ("size_bytes", pa.int64()),
    ("output_path", pa.string()),
    ("tag_path", pa.string()),
    ("keyword", pa.string()),
    ("action", pa.string()),
    ("basis", pa.string()),
    ("step", pa.string()),
    ("error_class", pa.string()),
    ("error_message", pa.string()),
    ("pixels_cleaned", pa.bool_()),
]
RESULT_ARROW_SCHEMA = pa.schema(RESULT_FIELDS)
RESULT_DDL = (
    "kind string, source_path string, file_sha256 string, size_bytes long, output_path string, "
    "tag_path string, keyword string, action string, basis string, step string, error_class string, "
    "error_message string, pixels_cleaned boolean"
)
AUDIT_COLUMNS = ["run_id", "file_sha256", "output_path", "tag_path", "keyword", "action", "basis"]


def local_path(path: str) -> str:
    """A POSIX path from ``path`` or a ``file:`` URI.

    Raises:
        DeidConfigError: For other URI schemes (executors write with POSIX I/O).
    """
    if path.startswith("file://"):
        return path[len("file://") :]
    if path.startswith("file:"):
        return path[len("file:") :]
    if "://" in path:
        raise DeidConfigError(
            f"{path!r}: run_deid writes DICOM and vault files with POSIX I/O from the executors; "
            "use a local or shared-filesystem path (or a file: URI)"
        )
    return path


class _FileFailure(Exception):
    def __init__(self, step: str, error: IngestFileError) -> None:
        super().__init__(step)
        self.step = step
        self.error = error


def _parse(content: bytes) -> Any:
    if not content:
        raise _FileFailure("read", EmptyFileError("the file is empty (0 bytes); remove it from the input"))
    try:
        return dcmread(io.BytesIO(content))
    except InvalidDicomError:
        # DICOM without preamble / file meta: accept it only when it starts like a dataset.
        if len(content) >= 8 and content[:2] in (b"\x08\x00", b"\x02\x00"):
            try:
                return dcmread(io.BytesIO(content), force=True)
            except Exception:
                pass
        raise _FileFailure(
            "parse",
            UnsupportedFormatError(
                "not a DICOM file (no 'DICM' prefix and no recognisable dataset); only DICOM can be "
                "de-identified: remove it from the input"
            ),
        ) from None
    except Exception as exc:
        raise _FileFailure(
            "parse",
            DeidProcessingError(
                f"the DICOM file cannot be parsed ({type(exc).__name__}); the original message is withheld "
                "because it may quote identifying values. Repair or remove the file"
            ),
        ) from None


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        try:
            os.link(tmp, target)
        except FileExistsError:
            if target.read_bytes() != data:
                raise DuplicateInstanceError(
                    f"{target.name} already exists with different content: another input file has the same "
                    "SOP Instance UID (or out_dir holds output of a run with another key/config); "
                    "de-duplicate the inputs or use a fresh out_dir"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)


def deidentify_bytes(deid: Deidentifier, content: bytes, dicom_dir: str) -> tuple[str, Any]:
    """De-identify one file's bytes and write the result under ``dicom_dir``.

    Returns:
        ``(relative output path, DeidResult)``.

    Raises:
        _FileFailure: Wrapping the per-file error (quarantined by the caller).
    """
    ds = _parse(content)
    try:
        result = deid.deidentify(ds)
    except DeidFileError as exc:
        raise _FileFailure(
            "profile" if not isinstance(exc, DuplicateInstanceError) else "write", exc
        ) from None
    except Exception as exc:
        raise _FileFailure(
            "profile",
            DeidProcessingError(
                f"de-identification failed ({type(exc).__name__}); the original message is withheld because "
                "it may quote identifying values. Inspect the file locally with Deidentifier.deidentify"
            ),
        ) from None
    missing = [
        name
        for name, value in (
            ("SOPInstanceUID", result.sop_uid),
            ("StudyInstanceUID", result.study_uid),
            ("SeriesInstanceUID", result.series_uid),
        )
        if not value
    ]
    if missing or "SOPClassUID" not in result.dataset:
        names = ", ".join(missing + ([] if "SOPClassUID" in result.dataset else ["SOPClassUID"]))
        raise _FileFailure(
            "layout",
            MissingIdentifierError(
                f"the dataset lacks {names}: it is not a composite DICOM instance and cannot be placed under "
                "<patient>/<study>/<series>/<sop>.dcm; remove it from the input"
            ),
        )
    buf = io.BytesIO()
    try:
        dcmwrite(buf, result.dataset, enforce_file_format=True)
        data = buf.getvalue()
        dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise _FileFailure(
            "encode",
            DeidProcessingError(
                f"the de-identified dataset cannot be encoded as DICOM ({type(exc).__name__}); "
                "nothing was written. Inspect the file locally with Deidentifier.deidentify"
            ),
        ) from None
    rel = f"dicom/{result.patient_pseudonym}/{result.study_uid}/{result.series_uid}/{result.sop_uid}.dcm"
    try:
        _atomic_write(Path(dicom_dir).parent / rel, data)
    except DuplicateInstanceError as exc:
        raise _FileFailure("write", exc) from None
    return rel, result


def _partition_fn(
    deid: Deidentifier,
    out_dir: str,
    vault_dir: str | None,
    vault_key_file: str | None,
    run_id: str,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    dicom_dir = os.path.join(out_dir, "dicom")

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from medimg_spark.worker import configure_worker

        configure_worker()
        vault: dict[VaultEntry, None] = {}
        for batch in batches:
            rows: list[dict[str, Any]] = []
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            for i, path in enumerate(paths):
                content = contents[i].as_py() or b""
                sha = hashlib.sha256(content).hexdigest()
                # the path's keyed pseudonym: folder names may carry a patient's name or ID
                pseudonym = deid.pseudonymizer.path_pseudonym(path)
                base = {"source_path": pseudonym, "file_sha256": sha, "size_bytes": len(content)}
                vault[VaultEntry(pseudonym, PATH_KIND, PATH_ATTRIBUTE, path, "")] = None
                try:
                    with quiet_pydicom():
                        rel, result = deidentify_bytes(deid, content, dicom_dir)
                except _FileFailure as failure:
                    rows.append(
                        {
                            **base,
                            "kind": "quarantine",
                            "step": failure.step,
                            "error_class": type(failure.error).__name__,
                            "error_message": str(failure.error),
                        }
                    )
                    continue
                except OSError as exc:
                    rows.append(
                        {
                            **base,
                            "kind": "quarantine",
                            "step": "write",
                            "error_class": "DeidProcessingError",
                            "error_message": f"writing the de-identified file failed: {exc.strerror}; check out_dir",
                        }
                    )
                    continue
                rows.append(
                    {**base, "kind": "written", "output_path": rel, "pixels_cleaned": result.pixels_cleaned}
                )
                rows.extend(
                    {
                        "kind": "audit",
                        "file_sha256": sha,
                        "output_path": rel,
                        "tag_path": a.tag_path,
                        "keyword": a.keyword,
                        "action": a.action,
                        "basis": a.basis,
                    }
                    for a in result.actions
                )
                vault.pop(VaultEntry(pseudonym, PATH_KIND, PATH_ATTRIBUTE, path, ""), None)
                vault[VaultEntry(pseudonym, PATH_KIND, PATH_ATTRIBUTE, path, result.patient_pseudonym)] = None
                vault.update(dict.fromkeys(result.vault))
            yield pa.RecordBatch.from_pylist(rows, schema=RESULT_ARROW_SCHEMA)
        if vault_dir is not None and vault_key_file is not None and vault:
            write_vault_file(vault_dir, vault, vault_key_file, run_id=run_id)

    return run


def _check_inputs(inputs: list[str]) -> None:
    if not inputs:
        raise DeidConfigError("run_deid: no input paths given; pass at least one file or directory")
    for p in inputs:
        if "://" in p and not p.startswith("file:"):
            continue
        if not os.path.exists(local_path(p)):
            raise DeidConfigError(f"run_deid: input path {p} does not exist; check the path")


def run_deid(
    spark: Any,
    inputs: list[str],
    out_dir: str,
    config: DeidConfig,
    key: bytes,
    vault_dir: str | None = None,
    allow_burned_in: bool = False,
    *,
    vault_key_file: str | None = None,
    run_id: str | None = None,
) -> dict:
    """De-identify DICOM files with Spark and write them, the audit and the quarantine.

    Args:
        spark: Active SparkSession.
        inputs: Files or directories (searched recursively).
        out_dir: Output root (``dicom/``, ``deid_audit/``, ``quarantine/``, ``deid_summary.json``).
        config: Profile options.
        key: Pseudonymisation key (see :func:`medimg_spark.privacy.load_key`).
        vault_dir: Where to write the encrypted re-identification vault; ``None`` writes none.
            Must not lie inside ``out_dir``.
        allow_burned_in: Write images that may carry burned-in text and match no pixel rule.
        vault_key_file: Vault master-key file (else ``config.vault_key_file``, else
            ``$MEDIMG_VAULT_KEY_FILE``); required when ``vault_dir`` is given.
        run_id: Identifier of the run (random when omitted).

    Returns:
        Summary: ``run_id``, ``files_in``, ``written``, ``pixels_cleaned``, ``quarantined``
        (count per error class), ``quarantined_total``, ``audit_rows``, ``out_dir``,
        ``vault_written``.

    Raises:
        DeidConfigError: Bad paths (missing input, non-POSIX output, vault inside out_dir).
        VaultKeyError: ``vault_dir`` given without a usable vault key file.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from medimg_spark.schema import QUARANTINE_SCHEMA

    _check_inputs(inputs)
    run_id = run_id or uuid.uuid4().hex
    out = Path(local_path(out_dir)).resolve()
    vault_path: str | None = None
    vault_key: str | None = None
    if vault_dir is not None:
        vpath = Path(local_path(vault_dir)).resolve()
        if vpath == out or out in vpath.parents:
            raise DeidConfigError(
                f"vault_dir {vpath} lies inside out_dir {out}; keep the re-identification vault in a separate "
                "location from the analytics output"
            )
        vault_key = resolve_vault_key_file(vault_key_file or config.vault_key_file)
        vault_path = str(ensure_private_dir(vpath))
    deid = Deidentifier(config, key, allow_burned_in=allow_burned_in)
    (out / "dicom").mkdir(parents=True, exist_ok=True)

    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .load([p if "://" in p or p.startswith("file:") else str(Path(p).resolve()) for p in inputs])
        .select("path", "content")
    )
    results = files.mapInArrow(_partition_fn(deid, str(out), vault_path, vault_key, run_id), RESULT_DDL)
    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        audit = (
            results.filter(F.col("kind") == "audit")
            .withColumn("run_id", F.lit(run_id))
            .select(*AUDIT_COLUMNS)
        )
        audit.write.mode("append").parquet(str(out / "deid_audit"))
        now = _dt.datetime.now(_dt.UTC).replace(tzinfo=None)
        quarantine = results.filter(F.col("kind") == "quarantine").select(
            F.coalesce(F.col("source_path"), F.lit("")).alias("source_path"),
            F.col("file_sha256"),
            F.col("size_bytes"),
            F.lit(None).cast("int").alias("frame_index"),
            F.lit(STAGE).alias("stage"),
            F.col("step"),
            F.coalesce(F.col("error_class"), F.lit("DeidProcessingError")).alias("error_class"),
            F.coalesce(F.col("error_message"), F.lit("")).alias("error_message"),
            F.lit(run_id).alias("ingest_run_id"),
            F.lit(now).cast("timestamp").alias("quarantined_at"),
        )
        quarantine = quarantine.to(QUARANTINE_SCHEMA)
        quarantine.write.mode("append").parquet(str(out / "quarantine"))
        counts = (
            results.filter(F.col("kind") != "audit")
            .groupBy("kind", "error_class")
            .agg(F.count("*").alias("n"), F.sum(F.col("pixels_cleaned").cast("int")).alias("cleaned"))
            .collect()
        )
        audit_rows = results.filter(F.col("kind") == "audit").count()
    finally:
        results.unpersist()

    quarantined = {r["error_class"]: int(r["n"]) for r in counts if r["kind"] == "quarantine"}
    written = sum(int(r["n"]) for r in counts if r["kind"] == "written")
    summary: dict[str, Any] = {
        "run_id": run_id,
        "files_in": written + sum(quarantined.values()),
        "written": written,
        "pixels_cleaned": sum(int(r["cleaned"] or 0) for r in counts if r["kind"] == "written"),
        "quarantined": dict(sorted(quarantined.items())),
        "quarantined_total": sum(quarantined.values()),
        "audit_rows": int(audit_rows),
        "out_dir": str(out),
        "vault_written": vault_path is not None and written > 0,
    }
    (out / "deid_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
