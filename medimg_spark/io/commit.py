"""Exactly-once commit protocol of incremental ingest's micro-batches, on the storage layer.

Structured Streaming's ``foreachBatch`` may replay a micro-batch whose attempt crashed (its offsets
were logged, its commit was not). :func:`commit_batch` makes the table appends of one micro-batch
idempotent: the batch is first written to ``<out>/_staging/batch-<id>``, marked complete, then its
files are moved into the tables, and ``<out>/_checkpoints/ingest_commits/<id>`` records the commit
(with the batch's counts). A replay finds the commit and returns its counts, or finds a complete
staging and only finishes the moves, or redoes an incomplete staging.

What a batch is written as is the caller's: a :data:`StageBatch` callable (ingest's decoding).
Every file call goes through :class:`medimg_spark.storage.Storage`, so the lake may be any Hadoop
URI as well as a local path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from medimg_spark.io.listing import hadoop_path
from medimg_spark.storage import Storage, join

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

__all__ = [
    "CHECKPOINT_DIR",
    "COMMITS_DIR",
    "STAGING_DIR",
    "TABLES",
    "StageBatch",
    "batch_files",
    "commit_batch",
    "run_available_now",
]

#: Structured Streaming's checkpoint of the incremental file source, under ``--out``.
CHECKPOINT_DIR = "_checkpoints/ingest"
#: Staging folder of ingest (decoded rows, micro-batches, crash marks), under ``--out``.
STAGING_DIR = "_staging"
#: One file per committed micro-batch (its counts as JSON), under ``--out``.
COMMITS_DIR = "_checkpoints/ingest_commits"
#: The tables a batch appends to.
TABLES = ("images", "instances", "quarantine")
#: Marker of a complete staging folder (holds the batch's counts).
COMPLETE = "_COMPLETE"

#: Writes one micro-batch's tables under a staging folder: ``(batch, batch_id, staging) -> counts``.
StageBatch = Callable[["DataFrame", int, str], Mapping[str, Any]]


def batch_files(store: Storage, checkpoint: str, n_sources: int, batch_id: int) -> list[str]:
    """Every file the streaming source assigned to ``batch_id`` (empty files included).

    Read from the file source logs of the checkpoint (``sources/<n>/<batch>`` or its ``.compact``
    form); a file the source listed but whose row ``binaryFile`` skipped (zero bytes) is in the log.
    """
    paths: list[str] = []
    for source in range(n_sources):
        base = join(checkpoint, "sources", str(source), str(batch_id))
        log = base if store.exists(base) else f"{base}.compact"
        if not store.exists(log):
            continue
        for line in store.read_text(log).splitlines()[1:]:  # first line: log format version
            if line.strip():
                entry = json.loads(line)
                if int(entry.get("batchId", batch_id)) == batch_id:
                    paths.append(hadoop_path(entry["path"]))  # the log holds URIs: decode them once
    return paths


def commit_batch(
    store: Storage,
    out: str,
    batch: DataFrame,
    batch_id: int,
    stage: StageBatch,
    tables: tuple[str, ...] = TABLES,
) -> dict[str, Any]:
    """Append micro-batch ``batch_id`` to the ``tables`` under ``out`` exactly once; returns its counts.

    Args:
        store: the storage of ``out``.
        out: the lake.
        batch: the micro-batch's rows, given to ``stage``.
        batch_id: Structured Streaming's batch id.
        stage: writes the batch's tables under the staging folder it is given; returns JSON-able counts.
        tables: the table folders moved from staging into ``out``.

    Returns:
        The counts of ``stage`` (read back from the commit record when the batch was committed before).
    """
    commit = join(out, COMMITS_DIR, str(batch_id))
    if store.exists(commit):
        return dict(store.read_json(commit))
    staging = join(out, STAGING_DIR, f"batch-{batch_id}")
    complete = join(staging, COMPLETE)
    if store.exists(complete):
        counts = dict(store.read_json(complete))
    else:
        store.delete(staging)
        counts = dict(stage(batch, batch_id, staging))
        store.write_json(complete, counts, indent=None)
    prefix = f"b{batch_id:09d}-"
    for table in tables:
        for rel in store.data_files(join(staging, table)):
            folder, _, name = rel.rpartition("/")
            store.move(join(staging, table, rel), join(out, table, folder, prefix + name))
    store.write_json(commit, counts, indent=None)
    store.delete(staging)
    return counts


def run_available_now(
    store: Storage, stream: DataFrame, out: str, per_batch: Callable[[DataFrame, int], None]
) -> None:
    """Run ``per_batch`` on every micro-batch of ``stream`` available now, then stop.

    The query's checkpoint is ``out/_checkpoints/ingest``; the staging folder is removed when empty.
    """
    query = (
        stream.writeStream.foreachBatch(per_batch)
        .option("checkpointLocation", join(out, CHECKPOINT_DIR))
        .trigger(availableNow=True)
        .start()
    )
    try:
        query.awaitTermination()
    finally:
        store.remove_if_empty(join(out, STAGING_DIR))
