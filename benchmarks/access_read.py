"""Secure read vs plain ``spark.read.parquet`` on a real lake table (e.g. the demo lake's images).

Usage::

    python benchmarks/access_read.py LAKE [--table images] [--repeat 3] [--master local[2]]

LAKE is a plain (unprotected) lake, e.g. the output of ``make demo`` or a PneumoniaMNIST ingest.
The script copies the table to a temporary lake, protects the copy with the shipped example policy,
and times, for each path: a full scan (``count`` after reading every non-pixel column) and a
pixel scan (sum of ``length(pixels)``), best of ``--repeat`` runs after one warm-up. It prints
one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    fn()  # warm-up: Python workers, file listing caches
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def _build_kms_jar(tmp: Path) -> Path:
    """Compile ``benchmarks/java/HadoopConfKms.java`` against Spark's jars into a jar (needs javac)."""
    import subprocess

    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    classes = tmp / "classes"
    classes.mkdir()
    src = Path(__file__).parent / "java" / "HadoopConfKms.java"
    subprocess.run(["javac", "-cp", f"{jars}/*", "-d", str(classes), str(src)], check=True)
    jar = tmp / "medimg-bench-kms.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True)
    return jar


def _spark_native(spark: Any, plain: Any, path: Path) -> Any:
    """The same table under Spark's own Parquet encryption, for comparison only.

    Spark's path needs a Java ``KmsClient`` class on every executor's classpath (Parquet ships
    only a test mock), and this one takes its master keys from Hadoop conf: the exposure (Spark UI
    environment tab, event log) the project's reader avoids.
    """
    import base64
    import os

    conf = spark.sparkContext._jsc.hadoopConfiguration()
    conf.set(
        "parquet.crypto.factory.class", "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
    )
    conf.set("parquet.encryption.kms.client.class", "medimg.bench.HadoopConfKms")
    keys = {k: base64.b64encode(os.urandom(32)).decode() for k in ("zone", "patient")}
    conf.set("medimg.bench.master.keys", ", ".join(f"{k}: {v}" for k, v in keys.items()))
    group = [
        c
        for c in (
            "patient_id",
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "source_path",
        )
        if c in plain.columns
    ]
    writer = plain.write.option("parquet.encryption.footer.key", "zone").option(
        "parquet.encryption.column.keys", "patient:" + ",".join(group)
    )
    if "modality" in plain.columns:
        writer.partitionBy("modality").parquet(str(path))
    else:
        writer.parquet(str(path))
    return spark.read.parquet(str(path))


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lake")
    ap.add_argument("--table", default="images")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()

    from pyspark.sql import functions as F

    from medimg_spark.access import Kms, load_policy, shipped_policy_path
    from medimg_spark.access.spark import protect_lake, read_table
    from medimg_spark.io.ingest import LAKE_MARKER
    from medimg_spark.session import build_session

    src = Path(args.lake)
    with tempfile.TemporaryDirectory(prefix="medimg-bench-access-") as tmp:
        jar = str(_build_kms_jar(Path(tmp)))
        spark = build_session(
            "medimg-bench-access",
            master=args.master,
            conf={
                "spark.ui.enabled": "false",
                "spark.driver.extraClassPath": jar,
                "spark.executor.extraClassPath": jar,
            },
        )
        spark.sparkContext.setLogLevel("ERROR")
        lake = Path(tmp) / "lake"
        lake.mkdir()
        shutil.copy(src / LAKE_MARKER, lake / LAKE_MARKER)
        shutil.copytree(src / args.table, lake / args.table)
        with shipped_policy_path().open() as fh:
            (Path(tmp) / "policy.yaml").write_text(fh.read())
        kms = Kms.init(Path(tmp) / "kms", load_policy(Path(tmp) / "policy.yaml"))
        t = time.perf_counter()
        (done,) = protect_lake(spark, lake, kms, tables=[args.table])
        protect_s = time.perf_counter() - t
        plain = spark.read.parquet(str(src / args.table))
        secure = read_table(spark, lake, args.table, principal="carol", purpose="quality", kms=kms)
        t = time.perf_counter()
        native = _spark_native(spark, plain, Path(tmp) / "native")
        native_write_s = time.perf_counter() - t
        cols = [c for c in plain.columns if c != "pixels"]
        results = {}
        for name, df in (("plain", plain), ("secure", secure), ("spark-native", native)):
            scan, n = _best(
                lambda df=df: df.select(*cols).where(F.col("image_id").isNotNull()).count(), args.repeat
            )
            px, total = _best(lambda df=df: df.select(F.sum(F.length("pixels"))).first()[0], args.repeat)
            results[name] = {
                "rows": n,
                "scan_s": round(scan, 3),
                "pixels_s": round(px, 3),
                "pixel_bytes": total,
            }
            print(json.dumps({"path": name, **results[name]}))
        assert results["plain"]["rows"] == results["secure"]["rows"] == done.rows
        assert results["plain"]["pixel_bytes"] == results["secure"]["pixel_bytes"]
        assert results["plain"]["pixel_bytes"] == results["spark-native"]["pixel_bytes"]
        size = sum(p.stat().st_size for p in (src / args.table).rglob("*.parquet"))
        print(
            json.dumps(
                {
                    "table": args.table,
                    "rows": done.rows,
                    "files": done.files_encrypted,
                    "bytes": size,
                    "protect_s": round(protect_s, 2),
                    "spark_native_write_s": round(native_write_s, 2),
                    "scan_ratio": round(results["secure"]["scan_s"] / results["plain"]["scan_s"], 2),
                    "pixels_ratio": round(results["secure"]["pixels_s"] / results["plain"]["pixels_s"], 2),
                    "native_scan_ratio": round(
                        results["spark-native"]["scan_s"] / results["plain"]["scan_s"], 2
                    ),
                    "native_pixels_ratio": round(
                        results["spark-native"]["pixels_s"] / results["plain"]["pixels_s"], 2
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()
