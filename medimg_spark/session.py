"""Build or reuse the SparkSession.

Settings come from, in increasing precedence: the spark-defaults file (:func:`defaults_file`), the YAML config's
``spark.conf`` section, then the ``--master`` flag. Under ``spark-submit`` the submitted
configuration wins: only keys it leaves unset are filled in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medimg_spark import resources
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


def check_java(minimum: int = 17) -> int:
    """Return the major version of ``java`` on PATH (or in ``$JAVA_HOME``).

    Raises:
        JavaMissingError: when Java is missing or older than ``minimum``.
    """
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
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
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    _register_sources(session)
    session.sparkContext.setLogLevel(os.environ.get("MEDIMG_SPARK_LOG_LEVEL", "WARN"))
    return session


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
