"""A class-data-sharing (AppCDS) archive of the Spark driver JVM's classes, kept between runs.

A local Spark session spends most of its start in the JVM loading and verifying some 10,000 classes
from pyspark's jars: 10.7–13.2 s and 12–13.5 JVM CPU-s per ``build_session`` on the 2-core benchmark
machine, 6.4–7.3 s and 6.8–7.1 CPU-s with this archive (measured with a session plus one job).

How it works (Java 13+, ``-XX:ArchiveClassesAtExit`` / ``-XX:SharedArchiveFile``):

1. A session started when no archive exists for this Java, pyspark and JVM option set records one:
   its JVM writes the classes it loaded to ``<key>.<token>.part`` when it exits (a few seconds, after
   the run's work), and a ``<key>.<token>.pid`` file (JSON) names that JVM, its class path and options.
2. A later session promotes the file once the recording JVM has exited: ``java -Xshare:on -version``
   with the recording JVM's class path and options must start with it mapped (a truncated archive
   crashes the JVM that maps it), then it is renamed to ``<key>.jsa``. A file that fails is deleted.
3. Sessions then start with ``-XX:SharedArchiveFile=<key>.jsa``. A JVM that cannot use the archive
   (another class path, other flags) ignores it and starts as without it; its CDS log lines are off.

The archive lives in ``$MEDIMG_SPARK_CACHE`` (default ``$XDG_CACHE_HOME/medimg-spark`` or
``~/.cache/medimg-spark``), under ``jvm/``; 160–210 MB per Java/pyspark installation. Set
``MEDIMG_SPARK_CLASS_ARCHIVE=off`` to neither record nor use one. Only sessions this package launches
use it: under ``spark-submit`` the launcher has started the JVM already.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Environment variable: ``off`` (or ``0``/``false``/``no``) disables the archive.
SWITCH_ENV = "MEDIMG_SPARK_CLASS_ARCHIVE"
#: Environment variable: the package's cache folder (the archive goes to its ``jvm/`` folder).
CACHE_ENV = "MEDIMG_SPARK_CACHE"
#: JVM option that silences the class-data-sharing log (a JVM that cannot map an archive warns).
QUIET = "-Xlog:cds*=off"
#: Seconds the ``java -version`` check of a recorded archive may take.
CHECK_TIMEOUT_S = 60
#: Seconds after which a recorded file without its pid file is deleted (the pid file is written when
#: the session has started, long before its JVM exits and writes the archive).
ORPHAN_AGE_S = 600


@dataclass(frozen=True)
class ArchivePlan:
    """What a session start does about the archive.

    Attributes:
        java_options: JVM options to add to ``spark.driver.extraJavaOptions`` ("" for none).
        pid_file: while recording: the file to write the recording JVM's process id to once it runs.
        archive: when using one: the archive the JVM maps.
    """

    java_options: str = ""
    pid_file: Path | None = None
    archive: Path | None = None


def enabled() -> bool:
    """False when :data:`SWITCH_ENV` says ``off``."""
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def cache_dir() -> Path:
    """The folder archives are kept in."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base) / "jvm"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medimg-spark" / "jvm"


def archive_key(java: str, java_options: str, class_path: str = "") -> str:
    """A name for the archive of this Java binary, pyspark installation and JVM option set.

    Any change of them (another Java, another or upgraded pyspark installation, other jars, other GC
    flags) gives another key, so an archive is only offered to the JVMs it was recorded for.
    """
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    real = Path(java).resolve()
    # the jars' folder too: an archive maps only into JVMs with the class path it was recorded with
    parts = [pyspark.__version__, str(jars.resolve()), str(real), str(real.stat().st_mtime_ns), java_options]
    parts.append(class_path)
    if jars.is_dir():
        parts += sorted(f"{p.name}:{p.stat().st_size}" for p in jars.iterdir())
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return f"spark-{pyspark.__version__}-{digest}"


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``R``, ``S``, ``Z`` …) from ``/proc``; None where unknown."""
    try:  # Linux: the state letter follows the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs. An exited process that its parent has not reaped yet (a zombie:
    a JVM orphaned to a child subreaper such as ``benchmarks/run.py``) has exited, so its archive is written.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _process_state(pid) not in ("Z", "X")


def _recorder(pid_file: Path) -> tuple[dict[str, Any], int]:
    """The recording JVM a pid file names, and its process id (0 when the file is unreadable)."""
    try:
        recorder = json.loads(pid_file.read_text())
        return recorder, int(recorder["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}, 0


def wait_for_recorders(timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until every recording JVM has exited, so its archive is written."""
    deadline = time.monotonic() + timeout_s
    for pid_file in cache_dir().glob("*.pid"):
        _, pid = _recorder(pid_file)
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)


def _usable(java: str, archive: Path, recorder: dict[str, Any]) -> bool:
    """True when a JVM started as the recording one was (its class path and options) maps ``archive``.

    ``-Xshare:on`` makes a JVM that cannot use the archive fail; a truncated file crashes it.
    """
    args = [
        a for a in recorder.get("jvm_args", []) if not a.startswith(("-XX:ArchiveClassesAtExit", "-Xlog"))
    ]
    cmd = [
        java,
        "-cp",
        str(recorder.get("class_path", "")),
        *args,
        f"-XX:SharedArchiveFile={archive}",
        "-Xshare:on",
        QUIET,
        "-XX:-CreateCoredumpOnCrash",
        "-XX:ErrorFile=/dev/null",
        "-version",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=CHECK_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _promote(java: str, folder: Path, key: str, final: Path) -> bool:
    """Check the recordings of ``key`` whose JVM has exited; rename a usable one to ``final``.

    Returns True when a recording is still running (its JVM alive), so no second one is started.
    """
    recording = False
    for part in folder.glob(f"{key}.*.part"):  # no pid file: its session failed to start; never checked
        if not part.with_suffix(".pid").exists() and part.stat().st_mtime < time.time() - ORPHAN_AGE_S:
            part.unlink(missing_ok=True)
    for pid_file in sorted(folder.glob(f"{key}.*.pid")):
        part = pid_file.with_suffix(".part")
        recorder, pid = _recorder(pid_file)
        if pid and _alive(pid):
            recording = True
            continue
        if not final.exists() and part.exists() and recorder and _usable(java, part, recorder):
            os.replace(part, final)
            log.info("JVM class archive ready: %s", final)
        part.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    return recording


def plan(java: str, java_options: str, class_path: str = "") -> ArchivePlan:
    """What the next driver JVM should do: use the archive, record one, or neither.

    Args:
        java: the ``java`` binary the session will start.
        java_options: the session's ``spark.driver.extraJavaOptions`` without the archive's options.
        class_path: the session's ``spark.driver.extraClassPath``.
    """
    if not enabled():
        return ArchivePlan()
    folder = cache_dir()
    try:
        key = archive_key(java, java_options, class_path)
        final = folder / f"{key}.jsa"
        if not final.exists():
            folder.mkdir(parents=True, exist_ok=True)
            recording = _promote(java, folder, key, final)
            if recording:
                return ArchivePlan()
            if not final.exists():
                part = folder / f"{key}.{secrets.token_hex(6)}.part"
                return ArchivePlan(
                    f"-XX:ArchiveClassesAtExit={part} {QUIET}", pid_file=part.with_suffix(".pid")
                )
        return ArchivePlan(f"-XX:SharedArchiveFile={final} {QUIET}", archive=final)
    except OSError as err:  # an unwritable or missing cache folder: start without an archive
        log.debug("no JVM class archive (%s)", err)
        return ArchivePlan()


def note_recorder(pid_file: Path, jvm: Any) -> None:
    """Write what the recording JVM is (process id, class path, options) next to the archive it will
    write at exit; ``jvm`` is the session's py4j view (``sparkContext._jvm``)."""
    try:
        runtime = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
        recorder = {
            "pid": int(runtime.getPid()),
            "class_path": str(runtime.getClassPath()),
            "jvm_args": [str(a) for a in runtime.getInputArguments()],
        }
        pid_file.write_text(json.dumps(recorder))
    except Exception as err:  # the archive is an optimisation: never fail a session for it
        log.debug("could not write %s (%s)", pid_file, err)
