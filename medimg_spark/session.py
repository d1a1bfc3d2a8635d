"""Build or reuse the SparkSession.

Settings come from, in increasing precedence: the spark-defaults file (:func:`defaults_file`), the YAML config's
``spark.conf`` section, then the ``--master`` flag. Under ``spark-submit`` the submitted
configuration wins: only keys it leaves unset are filled in.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark import resources
from medimg_spark.class_archive import ArchivePlan, enabled, note_recorder, plan, wait_for_recorders
from medimg_spark.errors import JavaMissingError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"


def defaults_file() -> Path | Traversable | None:
    """The spark-defaults file: ``$MEDIMG_SPARK_DEFAULTS``, ``./conf/spark-defaults.conf``, else the packaged one.

    The packaged file is ``medimg_spark/resources/spark-defaults.conf`` (a :class:`Traversable`, which may
    live inside a wheel); None only if the package is incomplete.
    """
    env = os.environ.get("MEDIMG_SPARK_DEFAULTS")
    for candidate in (Path(env) if env else None, Path.cwd() / "conf" / "spark-defaults.conf"):
        if candidate is not None and candidate.is_file():
            return candidate
    packaged = resources.root().joinpath(resources.SPARK_DEFAULTS)
    return packaged if packaged.is_file() else None


def read_spark_defaults(path: Path | Traversable | None) -> dict[str, str]:
    """Parse a ``spark-defaults.conf`` file: ``key value`` lines, ``#`` comments."""
    out: dict[str, str] = {}
    if path is None:
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = re.split(r"\s+", line, maxsplit=1)
        if len(parts) == 2:
            out[parts[0]] = parts[1].strip()
    return out


def under_spark_submit() -> bool:
    """True when this Python driver was launched by ``spark-submit`` (the JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def java_binary() -> str | None:
    """The ``java`` Spark's launcher runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")


def check_java(minimum: int = 17) -> int:
    """Return the major version of ``java`` on PATH (or in ``$JAVA_HOME``).

    Raises:
        JavaMissingError: when Java is missing or older than ``minimum``.
    """
    java = java_binary()
    how = (
        f"Spark needs Java {minimum}+: install it (Debian/Ubuntu: 'apt-get install openjdk-17-jre-headless', "
        "macOS: 'brew install openjdk@17') and put it on PATH or set JAVA_HOME"
    )
    if not java or not Path(java).exists():
        raise JavaMissingError(f"no 'java' found. {how}")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        raise JavaMissingError(f"could not read the version of {java}. {how}")
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    if major < minimum:
        raise JavaMissingError(f"{java} is Java {major}. {how}")
    return major


#: Attempts of a task in local mode, as ``spark.task.maxFailures``' default on a cluster.
LOCAL_TASK_ATTEMPTS = 4
_LOCAL = re.compile(r"^local(\[(\*|\d+)\])?$")


def with_task_retries(master: str) -> str:
    """``local`` / ``local[N]`` → ``local[N,4]``: retry a failed task, as a cluster does.

    Spark's local mode tries each task once, so a Python worker killed by the OS would fail the
    whole job; with retries the ingest crash guard quarantines the file it died on. A master that
    names its own failure count (``local[N,F]``) or is not local is returned unchanged.
    """
    m = _LOCAL.match(master.strip())
    if not m:
        return master
    return f"local[{m.group(2) or 1},{LOCAL_TASK_ATTEMPTS}]"


def build_session(
    app_name: str = "medimg-spark",
    master: str | None = None,
    conf: dict[str, Any] | None = None,
) -> SparkSession:
    """Build (or reuse) the SparkSession for a job.

    The ``medimg`` and ``dicom`` data sources are registered with the session in both cases
    (registration is idempotent), so ``spark.read.format("medimg")`` works on a reused session too.

    Args:
        app_name: Spark application name.
        master: ``--master`` flag; default ``local[*]``. Ignored under ``spark-submit``.
        conf: ``spark.*`` overrides from the job's YAML config.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        _register_sources(active)
        return active
    settings: dict[str, str] = {}
    archive = ArchivePlan()
    submitted = under_spark_submit()
    if not submitted:
        check_java()
        settings.update(read_spark_defaults(defaults_file()))
    settings.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (conf or {}).items()})
    builder = SparkSession.builder.appName(app_name)
    if submitted:
        from pyspark import SparkConf

        given = dict(SparkConf().getAll())
        settings = {k: v for k, v in settings.items() if k not in given}
    else:
        settings["spark.master"] = with_task_retries(master or settings.get("spark.master") or DEFAULT_MASTER)
        # Executors run the same interpreter (and so the same installed packages) as the driver.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        archive = _class_archive(settings)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    if archive.pid_file is not None:
        note_recorder(archive.pid_file, session.sparkContext._jvm)
    _register_sources(session)
    set_log_level(session, os.environ.get("MEDIMG_SPARK_LOG_LEVEL", "WARN"))
    return session


#: JVM loggers held at ERROR while the log level is WARN. parquet-java's record writer warns
#: "Too much memory used" with a dump of the whole column store (hundreds of lines) whenever a row group
#: buffers three times its target, which one multi-megabyte frame does against the 4 MiB row groups of
#: ``images``. The buffer stays bounded by the writer's record-count checks (``parquet.page.size.row.
#: check.max`` in spark-defaults), so the warning says nothing a user can act on.
QUIET_JVM_LOGGERS = ("org.apache.parquet.hadoop.InternalParquetRecordWriter",)


def set_log_level(session: SparkSession, level: str) -> None:
    """Set the JVM's log level; at WARN, hold :data:`QUIET_JVM_LOGGERS` at ERROR (else at ``level``).

    Applies to the driver's JVM, which runs the executors in local mode; a cluster's executors follow
    their own log4j2 configuration.
    """
    session.sparkContext.setLogLevel(level)
    jvm = session.sparkContext._jvm
    assert jvm is not None
    quiet = "ERROR" if level.upper() == "WARN" else level.upper()  # INFO, DEBUG...: shown again
    for name in QUIET_JVM_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
            name, jvm.org.apache.logging.log4j.Level.toLevel(quiet)
        )


def _class_archive(settings: dict[str, str]) -> ArchivePlan:
    """Add the JVM class archive's options (:mod:`medimg_spark.class_archive`) to ``settings``."""
    from pyspark import SparkContext

    java = java_binary()
    if SparkContext._gateway is not None:  # this process's JVM runs already: its options are set
        return ArchivePlan()
    key = "spark.driver.extraJavaOptions"
    base = settings.get(key, "")
    archive = plan(java, base, settings.get("spark.driver.extraClassPath", "")) if java else ArchivePlan()
    if archive.java_options:
        settings[key] = f"{base} {archive.java_options}".strip()
    return archive


def _register_sources(session: SparkSession) -> None:
    """Register ``spark.read.format("medimg"/"dicom")`` with ``session`` (idempotent)."""
    from medimg_spark.io.datasource import register

    register(session)


def run_concurrently(spark: SparkSession, *actions: Callable[[], Any]) -> list[Any]:
    """Run independent Spark actions from driver threads; their results in the order given.

    A stage's small bookkeeping actions (counts, collects, writes of small tables) each cost a planning
    round trip and a few short jobs that keep at most a core or two busy; submitted together, Spark's
    scheduler runs their tasks side by side and the driver plans one while another runs. Each thread
    inherits the caller's local properties and job tags (job group, description;
    :func:`pyspark.inheritable_thread_target`). Every action is waited for, also when one fails; the first
    failure (in the order given) is raised.

    Args:
        spark: the session the actions run in.
        actions: functions without arguments, each running one or more Spark actions.
    """
    if len(actions) <= 1:
        return [action() for action in actions]
    from concurrent.futures import ThreadPoolExecutor

    from pyspark.util import inheritable_thread_target

    with ThreadPoolExecutor(max_workers=len(actions), thread_name_prefix="medimg-action") as pool:
        futures = [pool.submit(inheritable_thread_target(spark)(action)) for action in actions]
        return [f.result() for f in futures]


@contextlib.contextmanager
def session_conf(
    spark: SparkSession, settings: Mapping[str, str], restore: Iterable[str] = ()
) -> Iterator[None]:
    """Set runtime SQL ``settings`` for the queries planned in this block; the earlier values (or unset
    keys) come back when it ends, also on error, as do those of the ``restore`` keys (which code in the
    block may change)."""
    old = {k: spark.conf.get(k, None) for k in [*settings, *restore]}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, before in old.items():
            if before is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, before)


#: Files a task keeps open at once in :func:`unsorted_partitioned_writes` (one per partition value it
#: writes); past that many values Spark sorts the task's remaining rows, as it otherwise does for all.
PARTITION_WRITERS = 16


def unsorted_partitioned_writes(
    spark: SparkSession, writers: int = PARTITION_WRITERS
) -> contextlib.AbstractContextManager[None]:
    """``partitionBy`` writes planned in this block write each row as it comes, to one open file per
    partition value, instead of sorting every task's rows by the partition columns first.

    Spark's planned writes (``spark.sql.optimizer.plannedWrite.enabled``) put a sort by the partition
    columns before every partitioned write. For image rows that sort copies every pixel blob into the
    sorter's memory pages and holds a task's whole output (100+ frames) before the first byte is written.
    With planned writes off and ``spark.sql.maxConcurrentOutputFileWriters`` set, Spark's file writer keeps
    up to ``writers`` files open per task instead (ingest writes 2 to 5 partition values per task: image
    modalities, instance and quarantine rows; preprocess 2) and falls back to the sort past that, so any
    number of values is still written correctly. Measured with ``benchmarks/ingest_overhead.py`` and
    ``benchmarks/run.py`` (see ``spark-defaults.conf``).
    """
    return session_conf(
        spark,
        {
            "spark.sql.optimizer.plannedWrite.enabled": "false",
            "spark.sql.maxConcurrentOutputFileWriters": str(writers),
        },
    )


def prepare_class_archive(timeout_s: float = 300.0) -> Path | None:
    """Make the JVM class archive (:mod:`medimg_spark.class_archive`) of this installation now, unless it
    exists: a throwaway local session in a subprocess records it, this call checks and promotes it.

    For benchmarks and set-up scripts, so that no measured or interactive run pays the recording (about
    10 s once). Returns the archive's path, or None when it is switched off or could not be made.
    """
    if not enabled() or under_spark_submit():
        return None

    def archive() -> Path | None:
        return _class_archive(read_spark_defaults(defaults_file())).archive

    found = archive()
    if found is not None:
        return found
    script = (
        "from medimg_spark.session import build_session; build_session(master='local[1]').range(1).count()"
    )
    subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=timeout_s, check=False)
    wait_for_recorders(timeout_s)
    return archive()
