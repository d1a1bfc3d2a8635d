"""How fast pixel rows cross between the JVM and Python: the Arrow paths vs a row-at-a-time UDF.

    python benchmarks/transport.py --n 500 --out DIR     # → DIR/transport.json and DIR/transport.md

The end-to-end benchmark (``benchmarks/run.py``) runs the same per-image Python work in every mode, so
its Arrow-vs-row-UDF ratio is bounded by that work (Amdahl). This one isolates the part the execution
path decides: the ``images`` table of the cached benchmark corpus (``N`` CT frames 512² int16 + ``N/2``
X-rays 1024² uint8, ingested once) is sent to Python and back with an identity function, four ways, in
one session, alternated ``--repeats`` times:

* ``map_in_arrow``: ``mapInArrow`` (what ingest and preprocess use);
* ``map_in_pandas``: ``mapInPandas`` (what features uses);
* ``arrow_udf``: a Python UDF with ``useArrow=True`` (Arrow-batched, called once per row);
* ``row_udf``: a plain pickled Python UDF (``spark.sql.execution.pythonUDF.arrow.enabled=false``).

Each result is forced by a count and a sum of CRC-32s of the returned pixels, checked equal to the
input's (a small cost, the same in every mode; ``baseline`` is that aggregate with no Python at all). Measured: images/s and MB/s of pixels,
CPU seconds per image of the JVM and of the Python workers (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run as bench  # noqa: E402  (benchmarks/run.py: corpus, sampler, machine info)

MODES = ("baseline", "map_in_arrow", "map_in_pandas", "arrow_udf", "row_udf")


def _identity_arrow(batches: Any) -> Any:
    yield from batches


def _identity_pandas(frames: Any) -> Any:
    yield from frames


def _identity(b: Any) -> Any:
    return b


def checksum(df: Any) -> tuple[int, int]:
    """(rows, sum of CRC-32 of ``pixels``): forces every row through the plan at a small, equal JVM cost."""
    from pyspark.sql import functions as F

    row = df.select(F.count("*"), F.sum(F.crc32("pixels"))).first()
    return int(row[0]), int(row[1] or 0)


def force(mode: str, images: Any) -> tuple[int, int]:
    """Send ``image_id, pixels`` of every row to Python and back; returns :func:`checksum` of the result."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BinaryType

    schema = "image_id string, pixels binary"
    if mode == "baseline":
        out = images
    elif mode == "map_in_arrow":
        out = images.mapInArrow(_identity_arrow, schema)
    elif mode == "map_in_pandas":
        out = images.mapInPandas(_identity_pandas, schema)
    elif mode == "arrow_udf":
        out = images.select(
            "image_id", F.udf(_identity, BinaryType(), useArrow=True)("pixels").alias("pixels")
        )
    elif mode == "row_udf":
        out = images.select(
            "image_id", F.udf(_identity, BinaryType(), useArrow=False)("pixels").alias("pixels")
        )
    else:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    return checksum(out)


def _cpu(sampler: bench.TreeSampler) -> dict[str, float]:
    sampler.sample()
    by_role: dict[str, float] = {}
    for pid, cpu in sampler.cpu_by_pid.items():
        role = sampler.role_by_pid.get(pid, "worker")
        by_role[role] = by_role.get(role, 0.0) + cpu
    return by_role


def measure(n: int, repeats: int, cores: int, work: Path) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from medimg_spark.io.ingest import ingest
    from medimg_spark.schema import IMAGES_SCHEMA

    root = bench.corpus(n, cores)
    spark = bench._session(
        f"local[{cores}]",
        {
            # the row UDF pickles rows in batches of this many (the default 100 overflows the heap)
            "spark.sql.execution.python.udf.maxRecordsPerBatch": "16",
        },
    )
    out = work / f"transport-n{n}"
    shutil.rmtree(out, ignore_errors=True)
    ingest(spark, [str(root)], str(out), deidentify=None)
    images = spark.read.schema(IMAGES_SCHEMA).parquet(f"{out}/images").select("image_id", "pixels")
    n_images, pixel_bytes = images.select(F.count("*"), F.sum(F.length("pixels"))).first()  # type: ignore[misc]
    expected = checksum(images)
    checksum(images)  # warm-up: JIT, page cache
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    checksums: dict[str, set[tuple[int, int]]] = {}
    with bench.TreeSampler(bench.os.getpid()) as sampler:
        for rep in range(repeats):
            for mode in MODES if rep % 2 == 0 else tuple(reversed(MODES)):
                before = _cpu(sampler)
                t0 = time.perf_counter()
                got = force(mode, images)
                wall = time.perf_counter() - t0
                if got != expected:
                    raise RuntimeError(
                        f"{mode}: rows/pixel checksum {got} differ from the input's {expected}"
                    )
                checksums.setdefault(mode, set()).add(got)
                after = _cpu(sampler)
                cpu = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("driver", "jvm", "worker")}
                results[mode].append({"wall_s": wall, **{f"cpu_{k}_s": v for k, v in cpu.items()}})
                print(f"{mode}: {wall:.2f} s, {n_images / wall:.1f} images/s", flush=True)
    spark.stop()
    shutil.rmtree(out, ignore_errors=True)
    modes: dict[str, Any] = {}
    for mode, reps in results.items():
        wall = statistics.median(r["wall_s"] for r in reps)
        jvm = statistics.median(r["cpu_jvm_s"] for r in reps)
        worker = statistics.median(r["cpu_worker_s"] for r in reps)
        modes[mode] = {
            "wall_s": round(wall, 3),
            "wall_s_all": [round(r["wall_s"], 3) for r in reps],
            "images_per_s": round(n_images / wall, 2),
            "pixel_mb_per_s": round(pixel_bytes / wall / 1e6, 1),
            "cpu_ms_per_image_jvm": round(1000 * jvm / n_images, 2),
            "cpu_ms_per_image_workers": round(1000 * worker / n_images, 2),
            "cpu_ms_per_image": round(1000 * (jvm + worker) / n_images, 2),
            "checksums": [list(c) for c in sorted(checksums[mode])],
        }
    ratios = compare(modes)
    return {
        "n": n,
        "images": int(n_images),
        "pixel_mb": round(pixel_bytes / 1e6, 1),
        "checksum": list(expected),
        "repeats": repeats,
        "cores": cores,
        "modes": modes,
        "vs_row_udf": ratios,
    }


def compare(modes: dict[str, Any]) -> dict[str, Any]:
    """Each Arrow path against the row UDF: raw, and net of the ``baseline`` scan every mode shares."""
    row, base = modes["row_udf"], modes["baseline"]

    def net_s(v: dict[str, Any]) -> float:  # seconds per image spent on the way to Python and back
        return 1 / v["images_per_s"] - 1 / base["images_per_s"]

    def ratio(a: float, b: float) -> float | None:  # None when noise leaves nothing to compare (tiny N)
        return round(a / b, 2) if a > 0 and b > 0 else None

    return {
        m: {
            "throughput_vs_row_udf": round(v["images_per_s"] / row["images_per_s"], 2),
            "cpu_row_udf_over_mode": round(row["cpu_ms_per_image"] / v["cpu_ms_per_image"], 2),
            "net_time_row_udf_over_mode": ratio(net_s(row), net_s(v)),
            "net_cpu_row_udf_over_mode": ratio(
                row["cpu_ms_per_image"] - base["cpu_ms_per_image"],
                v["cpu_ms_per_image"] - base["cpu_ms_per_image"],
            ),
        }
        for m, v in modes.items()
        if m not in ("row_udf", "baseline")
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Pixel transport JVM ↔ Python ({report['started_at']})",
        "",
        bench.machine_line(m, commit=True),
        f"N={report['n']}: {report['images']} images, {report['pixel_mb']} MB of pixels, local[{report['cores']}], "
        f"identity function, median of {report['repeats']} alternated repeats.",
        "",
        "| mode | images/s | pixel MB/s | CPU ms/image (JVM + workers) | throughput vs row UDF "
        "| net of baseline: time, CPU vs row UDF |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, v in report["modes"].items():
        vs = report["vs_row_udf"].get(mode)
        ratio = f"{vs['throughput_vs_row_udf']}×" if vs else ("1×" if mode == "row_udf" else "–")
        net = (
            f"{vs['net_time_row_udf_over_mode']}×, {vs['net_cpu_row_udf_over_mode']}×"
            if vs
            else ("1×, 1×" if mode == "row_udf" else "–")
        )
        lines.append(
            f"| {mode} | {v['images_per_s']} | {v['pixel_mb_per_s']} | {v['cpu_ms_per_image']} "
            f"({v['cpu_ms_per_image_jvm']} + {v['cpu_ms_per_image_workers']}) | {ratio} | {net} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="corpus size N (images = 1.5 N); default 500")
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats per mode (median); default 3")
    p.add_argument("--cores", type=int, default=2, help="local[cores]; default 2")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for transport.json/.md")
    p.add_argument("--work", default=str(bench.CACHE / "runs"), help="scratch folder")
    args = p.parse_args(argv)
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": bench.machine_info(),
        **measure(args.n, args.repeats, args.cores, Path(args.work)),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "transport.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
