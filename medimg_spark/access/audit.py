"""Append-only, tamper-evident audit log: hash-chained JSON lines, each sealed with an HMAC.

Every entry records who (``actor``: the OS user running the command; ``principal``: on whose
behalf), what (``action``, ``target``, ``details``), when (``ts``, UTC), the ``purpose`` of use and
the ``outcome`` (``allowed``/``denied``/``ok``/``error``), plus ``seq``, the previous entry's hash
``prev`` and its own ``hash`` (SHA-256 of the canonical JSON of every other field). ``mac`` is
HMAC-SHA256 of ``hash`` under the KMS-held audit key, so rewriting the whole chain from an edited
entry onwards is detected too unless the audit key is also stolen. A head file (``audit.head``)
holds the last ``seq``/``hash`` (also MACed), so dropping entries at the end is detected.

:meth:`AuditLog.verify` walks the chain and reports the first broken entry. Entries never hold
key material or identifiers (a re-identification records the pseudonym's kind and digest).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import getpass
import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medimg_spark.access.errors import AuditError

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "VerifyResult", "current_actor"]

GENESIS = "0" * 64
Outcome = Literal["allowed", "denied", "ok", "error"]


def current_actor() -> str:
    """The OS user running this process (who performed an administrative action)."""
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no user database entry
        return f"uid:{os.getuid()}"


def _canon(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class AuditEntry:
    """One audit record (see the module docstring for the fields)."""

    seq: int
    ts: str
    actor: str
    principal: str | None
    action: str
    target: str
    purpose: str | None
    outcome: str
    details: dict[str, Any]
    prev: str
    hash: str
    mac: str

    def body(self) -> dict[str, Any]:
        """The hashed fields (everything but ``hash`` and ``mac``)."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "principal": self.principal,
            "action": self.action,
            "target": self.target,
            "purpose": self.purpose,
            "outcome": self.outcome,
            "details": self.details,
            "prev": self.prev,
        }

    def to_json(self) -> dict[str, Any]:
        """The JSON line's content."""
        return {**self.body(), "hash": self.hash, "mac": self.mac}


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :meth:`AuditLog.verify`.

    Attributes:
        ok: the whole chain verifies.
        entries: how many entries were read.
        first_bad: the 1-based line number of the first broken entry (None when ok).
        reason: why that entry is broken.
        head: the last entry's hash.
    """

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    head: str = GENESIS

    @property
    def message(self) -> str:
        """One line for the command line."""
        if self.ok:
            return f"audit chain OK: {self.entries} entries, head {self.head[:16]}…"
        return f"audit chain BROKEN at entry {self.first_bad} of {self.entries}: {self.reason}"


class AuditLog:
    """The audit log file ``<kms>/audit.jsonl`` and its head ``<kms>/audit.head``.

    Args:
        path: the JSONL file.
        key: the audit HMAC key (held by the KMS, never released to a principal).
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self._key = key

    def _mac(self, digest: str) -> str:
        return hmac.new(self._key, digest.encode(), hashlib.sha256).hexdigest()

    def _read_head(self) -> tuple[int, str]:
        if not self.head_path.exists():
            return 0, GENESIS
        data = json.loads(self.head_path.read_text())
        return int(data["seq"]), str(data["hash"])

    def append(
        self,
        action: str,
        *,
        target: str = "",
        principal: str | None = None,
        purpose: str | None = None,
        outcome: Outcome = "ok",
        details: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> AuditEntry:
        """Append one entry under an exclusive lock (concurrent writers serialise).

        Raises:
            AuditError: the log cannot be written (the caller must not proceed unaudited).
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._read_head()
            body = {
                "seq": seq + 1,
                "ts": _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds"),
                "actor": actor or current_actor(),
                "principal": principal,
                "action": action,
                "target": target,
                "purpose": purpose,
                "outcome": outcome,
                "details": json.loads(json.dumps(dict(details or {}), default=str)),
                "prev": prev,
            }
            digest = hashlib.sha256(_canon(body)).hexdigest()
            entry = AuditEntry(**body, hash=digest, mac=self._mac(digest))
            os.write(fd, _canon(entry.to_json()) + b"\n")
            os.fsync(fd)
            head = {"seq": entry.seq, "hash": digest, "mac": self._mac(f"head:{entry.seq}:{digest}")}
            tmp = self.head_path.with_suffix(".head.tmp")
            tmp.write_text(json.dumps(head))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.head_path)
        except OSError as exc:
            raise AuditError(f"cannot append to the audit log {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return entry

    def entries(self) -> Iterator[dict[str, Any]]:
        """The raw entries, in file order (unverified)."""
        if not self.path.exists():
            return
        with self.path.open() as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def verify(self) -> VerifyResult:
        """Walk the chain: each entry's hash, MAC, sequence number and link to the previous one.

        Returns:
            The result, naming the first broken entry (an edited, deleted, inserted or reordered
            entry, a rewritten chain without the audit key, or entries dropped at the end).
        """
        prev, n = GENESIS, 0
        if not self.path.exists():
            return VerifyResult(ok=False, entries=0, first_bad=1, reason=f"no audit log at {self.path}")
        with self.path.open() as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        for n, line in enumerate(lines, start=1):

            def bad(reason: str, n: int = n, head: str = prev) -> VerifyResult:
                return VerifyResult(ok=False, entries=len(lines), first_bad=n, reason=reason, head=head)

            try:
                data = json.loads(line)
                entry = AuditEntry(**data)
            except (ValueError, TypeError) as exc:
                return bad(f"not a valid audit entry ({type(exc).__name__})")
            if entry.seq != n:
                return bad(
                    f"sequence number {entry.seq}, expected {n} (an entry was deleted, inserted or moved)"
                )
            if entry.prev != prev:
                return bad("its prev hash does not match the previous entry (deleted, inserted or reordered)")
            digest = hashlib.sha256(_canon(entry.body())).hexdigest()
            if digest != entry.hash:
                return bad("its content does not match its hash (the entry was edited)")
            if not hmac.compare_digest(self._mac(digest), entry.mac):
                return bad("its MAC does not verify under the audit key (the chain was rewritten)")
            prev = digest
        try:
            head_seq, head_hash = self._read_head()
            head_mac = json.loads(self.head_path.read_text())["mac"] if self.head_path.exists() else ""
        except (ValueError, KeyError, OSError):
            return VerifyResult(False, len(lines), len(lines) + 1, "the head file is unreadable", prev)
        if not hmac.compare_digest(self._mac(f"head:{head_seq}:{head_hash}"), head_mac):
            return VerifyResult(
                False, len(lines), len(lines) + 1, "the head file's MAC does not verify", prev
            )
        if head_seq != len(lines) or head_hash != prev:
            return VerifyResult(
                ok=False,
                entries=len(lines),
                first_bad=min(head_seq, len(lines)) + 1,
                reason=f"the head records {head_seq} entries but the log has {len(lines)} "
                "(entries were dropped at the end, or the log was replaced)",
                head=prev,
            )
        return VerifyResult(ok=True, entries=len(lines), head=prev)
