"""The medimg CLI and the thin spark-submit jobs: exit codes, config validation before Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from medimg_spark.cli import EXIT_CONFIG, main
from medimg_spark.config import load_config, parse_config
from medimg_spark.errors import ConfigError
from medimg_spark.session import read_spark_defaults

REPO = Path(__file__).resolve().parents[1]


def test_bad_config_fails_before_spark_with_a_fix(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ingest:\n  max_file_bytess: 10\n  default_modality: ''\n")
    code = main(["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert code == EXIT_CONFIG
    assert "ingest.max_file_bytess" in err and "remove it or fix its spelling" in err
    assert "ingest.default_modality" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ingest", "/no/such/folder", "--out", "/tmp/x"], "does not exist"),
        (["ingest", "--out", "/tmp/x"], "required"),
        (["run"], "needs --config"),
        (["ingest", ".", "--out", "/tmp/x", "--config", "/no/such.yaml"], "does not exist"),
    ],
)
def test_argument_errors_exit_2(argv: list[str], needle: str, capsys) -> None:
    assert main(argv) == EXIT_CONFIG
    assert needle in capsys.readouterr().err


def test_ingest_without_a_key_fails_before_spark(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MEDIMG_DEID_KEY", raising=False)
    monkeypatch.delenv("MEDIMG_DEID_KEY_FILE", raising=False)
    code = main(["ingest", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == EXIT_CONFIG
    assert "no de-identification key" in capsys.readouterr().err
    assert (
        main(["ingest", str(tmp_path), "--out", str(tmp_path / "o"), "--keep-phi", "--ephemeral-key"])
        == EXIT_CONFIG
    )


def test_config_models_reject_unknown_sections_and_types() -> None:
    with pytest.raises(ConfigError, match="sparkk"):
        parse_config({"sparkk": {}})
    with pytest.raises(ConfigError, match=r"ingest\.max_file_bytes"):
        parse_config({"ingest": {"max_file_bytes": 2**40}})
    cfg = load_config(REPO / "conf" / "demo.yaml")
    assert cfg.ingest.default_modality == "OT" and cfg.pipeline.out == "demo-out"


def test_spark_defaults_file_parses() -> None:
    conf = read_spark_defaults(REPO / "medimg_spark" / "resources" / "spark-defaults.conf")
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert int(conf["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0


def test_log_level_warn_holds_parquet_writer_dumps_at_error(spark) -> None:
    from medimg_spark.session import QUIET_JVM_LOGGERS, set_log_level

    jvm = spark.sparkContext._jvm
    log_manager = jvm.org.apache.logging.log4j.LogManager

    def level(name: str) -> str:
        return str(log_manager.getLogger(name).getLevel().toString())

    try:
        set_log_level(spark, "WARN")
        assert level(QUIET_JVM_LOGGERS[0]) == "ERROR"
        assert level("org.apache.parquet.hadoop.ParquetFileWriter") == "WARN"  # only the named logger
        set_log_level(spark, "INFO")  # asked for more: the writer's warnings too
        assert level(QUIET_JVM_LOGGERS[0]) == "INFO"
    finally:
        set_log_level(spark, "ERROR")  # the test session's level (conftest)
    assert level(QUIET_JVM_LOGGERS[0]) == "ERROR"


def _spark_submit() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


# ~55 s: a real spark-submit (make integration; tests/test_cluster.py submits the jobs to a standalone cluster)
@pytest.mark.integration
def test_ingest_job_through_spark_submit(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    (src / "empty.dcm").write_bytes(b"")
    out = tmp_path / "out"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run(
        [
            _spark_submit(),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            str(REPO / "jobs" / "ingest.py"),
            str(src),
            "--out",
            str(out),
            "--json",
            "--ephemeral-key",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["frames_written"] == 1
    assert summary["quarantined_by_error_class"] == {"EmptyFileError": 1}
    assert (out / "runs" / f"{summary['run_id']}.json").is_file()
    assert summary["identified"] is False and not (out / "IDENTIFIED").exists()
    assert summary["identified"] is False and not (out / "IDENTIFIED").exists()
