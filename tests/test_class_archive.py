"""The JVM class archive kept between sessions (medimg_spark.class_archive), with a real ``java``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medimg_spark import class_archive
from medimg_spark.session import java_binary

JAVA = java_binary()
pytestmark = pytest.mark.skipif(JAVA is None, reason="needs java")  # make test installs it


def _record(folder: Path, key: str, token: str, class_path: Path) -> Path:
    """A real recording: a JVM that loads its classes and writes the archive when it exits."""
    part = folder / f"{key}.{token}.part"
    proc = subprocess.run(
        [
            str(JAVA),
            "-cp",
            str(class_path),
            f"-XX:ArchiveClassesAtExit={part}",
            class_archive.QUIET,
            "-version",
        ],
        capture_output=True,
        check=True,
    )
    assert proc.returncode == 0 and part.exists()
    return part


def _pid_file(part: Path, pid: int, class_path: Path) -> None:
    recorder = {"pid": pid, "class_path": str(class_path), "jvm_args": []}
    part.with_suffix(".pid").write_text(json.dumps(recorder))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_an_exited_recorder_not_reaped_yet_does_not_hold_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JVM orphaned to a child subreaper (benchmarks/run.py) stays a zombie until reaped: it has exited
    and written its archive, so waiting for it must end at once, not at the timeout."""
    monkeypatch.setenv(class_archive.CACHE_ENV, str(tmp_path))
    folder = class_archive.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # exits; not waited for: a zombie
    try:
        deadline = time.monotonic() + 30
        while class_archive._process_state(proc.pid) != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, 0)  # the process id still exists
        assert not class_archive._alive(proc.pid)
        assert class_archive._alive(os.getpid())
        _pid_file(folder / "k.t.part", proc.pid, tmp_path)
        started = time.monotonic()
        class_archive.wait_for_recorders(20.0)
        assert time.monotonic() - started < 5.0
    finally:
        proc.wait()


def test_plan_records_promotes_a_checked_archive_and_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(class_archive.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(class_archive.SWITCH_ENV, raising=False)
    cp = tmp_path / "classes"
    cp.mkdir()
    assert JAVA is not None
    key = class_archive.archive_key(JAVA, "-XX:+UseSerialGC")
    assert key != class_archive.archive_key(JAVA, "-XX:+UseParallelGC")  # other options, other archive
    folder = class_archive.cache_dir()
    assert folder == tmp_path / "cache" / "jvm"

    first = class_archive.plan(JAVA, "-XX:+UseSerialGC")  # nothing yet: record one
    assert first.java_options.startswith(f"-XX:ArchiveClassesAtExit={folder / key}.")
    assert first.java_options.endswith(".part " + class_archive.QUIET)
    assert first.pid_file is not None and first.pid_file.parent == folder

    # a recording whose JVM still runs: neither a second recording nor an archive
    running = _record(folder, key, "running", cp)
    _pid_file(running, os.getpid(), cp)
    assert class_archive.plan(JAVA, "-XX:+UseSerialGC") == class_archive.ArchivePlan()

    # a truncated recording (its JVM killed while writing) is deleted, never offered to a JVM
    truncated = _record(folder, key, "cut", cp)
    data = truncated.read_bytes()
    truncated.chmod(0o600)
    truncated.write_bytes(data[: len(data) // 2])
    _pid_file(truncated, _dead_pid(), cp)
    running.with_suffix(".pid").unlink()
    running.unlink()
    again = class_archive.plan(JAVA, "-XX:+UseSerialGC")
    assert "ArchiveClassesAtExit" in again.java_options  # records anew
    assert not truncated.exists() and not truncated.with_suffix(".pid").exists()

    # a complete recording of an exited JVM is checked, renamed and used
    done = _record(folder, key, "done", cp)
    _pid_file(done, _dead_pid(), cp)
    used = class_archive.plan(JAVA, "-XX:+UseSerialGC")
    final = folder / f"{key}.jsa"
    assert used == class_archive.ArchivePlan(
        f"-XX:SharedArchiveFile={final} {class_archive.QUIET}", archive=final
    )
    assert final.exists() and not done.exists() and not done.with_suffix(".pid").exists()
    check = subprocess.run(
        [JAVA, "-cp", str(cp), f"-XX:SharedArchiveFile={final}", "-Xshare:on", "-version"],
        capture_output=True,
    )
    assert check.returncode == 0  # the JVM maps it

    monkeypatch.setenv(class_archive.SWITCH_ENV, "off")
    assert class_archive.plan(JAVA, "-XX:+UseSerialGC") == class_archive.ArchivePlan()


def test_sessions_record_then_start_from_the_archive(tmp_path: Path) -> None:
    """Two real sessions: the first records the archive at its JVM's exit, the second maps it."""
    env = {**os.environ, class_archive.CACHE_ENV: str(tmp_path), class_archive.SWITCH_ENV: "on"}
    script = (
        "from medimg_spark.session import build_session\n"
        "s = build_session(master='local[1]')\n"
        "rt = s.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()\n"
        "print('ARGS', ' '.join(rt.getInputArguments()))\n"
        "print('ROWS', s.range(3).count())\n"
    )

    def session() -> str:
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "ROWS 3" in out.stdout and "[cds" not in out.stdout + out.stderr  # the CDS log is off
        return next(line for line in out.stdout.splitlines() if line.startswith("ARGS"))

    assert "-XX:ArchiveClassesAtExit=" in session()
    folder = tmp_path / "jvm"
    (pid_file,) = folder.glob("*.pid")
    pid = json.loads(pid_file.read_text())["pid"]
    deadline = time.monotonic() + 120
    while class_archive._alive(pid) and time.monotonic() < deadline:  # the JVM writes the archive at exit
        time.sleep(0.5)
    args = session()
    (final,) = folder.glob("*.jsa")
    assert f"-XX:SharedArchiveFile={final}" in args and "ArchiveClassesAtExit" not in args
    assert not list(folder.glob("*.part")) and not list(folder.glob("*.pid"))
