"""Key management: versioned master keys per zone and per protected column group, released by policy.

A KMS directory (mode 0700; every file 0600) holds::

    policy.yaml                  the active policy (grant/revoke edit it; every change is audited)
    keys/<name>/v<N>.key         master keys, hex: zone.<zone>, group.<table>.<group>, audit
    audit.jsonl, audit.head      the hash-chained audit log (see medimg_spark.access.audit)

A key is identified as ``<name>@v<N>``; rotation adds a version, old versions stay so that data
written under them can still be read by those still allowed (``medimg access protect --rekey``
re-encrypts everything under the current versions). :meth:`Kms.release` is the only way a
principal obtains keys: it evaluates the policy, audits the release or the denial, and returns a
:class:`ReleasedKeys` bundle. :class:`BundleKmsClient` is the pyarrow ``KmsClient`` that wraps and
unwraps Parquet data keys with AES-256-GCM under the released master keys (the key id is the
associated data). In a hospital this file-backed store is replaced by an HSM or Vault transit
engine behind the same interface (``release``/``rotate``/``admin_keys``); see the README.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet.encryption as pe

from medimg_spark.access.audit import AuditLog
from medimg_spark.access.errors import AccessDeniedError, KeyUnavailableError, KmsError
from medimg_spark.access.policy import AccessPolicy, Decision, LakeStatus, load_policy

__all__ = [
    "AUDIT_KEY",
    "KMS_DIR_ENV",
    "BundleKmsClient",
    "Kms",
    "Release",
    "ReleasedKeys",
    "key_id",
    "parse_key_id",
    "resolve_kms_dir",
]

KMS_DIR_ENV = "MEDIMG_KMS_DIR"
AUDIT_KEY = "audit"
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_VERSION = re.compile(r"^v(\d+)\.key$")


def key_id(name: str, version: int) -> str:
    """``<name>@v<version>``: the master-key identifier stored in Parquet key metadata."""
    return f"{name}@v{version}"


def parse_key_id(kid: str) -> tuple[str, int]:
    """Split a key id into its name and version.

    Raises:
        KmsError: not a ``name@vN`` id.
    """
    name, sep, ver = kid.rpartition("@v")
    if not sep or not ver.isdigit():
        raise KmsError(f"malformed key id {kid!r}: expected name@vN")
    return name, int(ver)


def resolve_kms_dir(explicit: str | os.PathLike[str] | None) -> str:
    """The KMS directory: ``explicit`` or ``$MEDIMG_KMS_DIR``.

    Raises:
        KmsError: neither is set.
    """
    path = os.fspath(explicit) if explicit else os.environ.get(KMS_DIR_ENV)
    if not path:
        raise KmsError(
            f"no KMS directory: pass --kms DIR or set ${KMS_DIR_ENV} (create one with 'medimg access init')"
        )
    return path


class ReleasedKeys:
    """Master keys released to one reader: ``key id -> bytes``. Picklable; never printed.

    Attributes:
        token: a random id of this release (the pyarrow key-access token, and in the audit log).
    """

    def __init__(self, keys: Mapping[str, bytes], token: str | None = None) -> None:
        self._keys = dict(keys)
        self.token = token or secrets.token_hex(8)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kid: str) -> bytes:
        """The key bytes of ``kid``.

        Raises:
            KeyUnavailableError: the key was not released to this reader.
        """
        try:
            return self._keys[kid]
        except KeyError:
            raise KeyUnavailableError(
                f"master key {kid} was not released to this reader (a revoked grant, a rotated key "
                "version, or a zone/column the policy does not allow)"
            ) from None

    @property
    def ids(self) -> tuple[str, ...]:
        """The released key ids (no key material)."""
        return tuple(sorted(self._keys))

    def __repr__(self) -> str:
        return f"ReleasedKeys(token={self.token!r}, ids={list(self.ids)})"

    __str__ = __repr__


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


class BundleKmsClient(pe.KmsClient):  # type: ignore[misc]
    """pyarrow KMS client over a :class:`ReleasedKeys` bundle: AES-256-GCM, key id as associated data."""

    def __init__(self, keys: ReleasedKeys) -> None:
        pe.KmsClient.__init__(self)
        self._keys = keys

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        """Encrypt a data (or key-encryption) key under a released master key."""
        nonce = os.urandom(12)
        sealed = _aead(self._keys.get(master_key_identifier)).encrypt(
            nonce, bytes(key_bytes), master_key_identifier.encode()
        )
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unwrap_key(self, wrapped_key: str | bytes, master_key_identifier: str) -> bytes:
        """Decrypt a wrapped key; raises KeyUnavailableError when the master key was not released."""
        raw = base64.b64decode(wrapped_key)
        return bytes(
            _aead(self._keys.get(master_key_identifier)).decrypt(
                raw[:12], raw[12:], master_key_identifier.encode()
            )
        )


def crypto_factory(keys: ReleasedKeys) -> pe.CryptoFactory:
    """A pyarrow CryptoFactory whose KMS client uses only ``keys``."""
    return pe.CryptoFactory(lambda _config: BundleKmsClient(keys))


def connection_config(keys: ReleasedKeys) -> pe.KmsConnectionConfig:
    """The pyarrow connection config of a bundle (its token keeps pyarrow's key caches apart)."""
    return pe.KmsConnectionConfig(kms_instance_id="medimg-access", key_access_token=keys.token)


@dataclass(frozen=True)
class Release:
    """What :meth:`Kms.release` hands to a reader: the decision and the keys it allows."""

    decision: Decision
    keys: ReleasedKeys = field(repr=False)


def _check_private(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KmsError(
            f"{what} {path} has mode {oct(mode)}: group/other may read it; chmod {'700' if path.is_dir() else '600'} it"
        )


def _write_private(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _mkdir_private(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


class Kms:
    """A file-backed KMS directory (created by :meth:`init`).

    Raises:
        KmsError: the directory is not an initialised KMS, or is readable by group/other.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        if not (self.dir / "policy.yaml").is_file() or not (self.dir / "keys").is_dir():
            raise KmsError(
                f"{self.dir} is not a KMS directory (no policy.yaml and keys/); create one with "
                f"'medimg access init --kms {self.dir} --policy POLICY.yaml'"
            )
        _check_private(self.dir, "the KMS directory")
        self.audit = AuditLog(self.dir / "audit.jsonl", self._read(key_id(AUDIT_KEY, 1)))

    # ------------------------------------------------------------------ creation

    @classmethod
    def init(cls, directory: str | os.PathLike[str], policy: AccessPolicy) -> Kms:
        """Create a KMS directory: the policy, version 1 of every zone/group key, the audit key.

        Raises:
            KmsError: the directory already holds a KMS.
        """
        d = Path(directory)
        if (d / "policy.yaml").exists():
            raise KmsError(
                f"{d} already holds a KMS (policy.yaml); use another directory or 'medimg access grant'"
            )
        _mkdir_private(d)
        _mkdir_private(d / "keys")
        _write_private(d / "policy.yaml", policy.to_yaml())
        for name in sorted(policy.all_key_names() | {AUDIT_KEY}):
            cls._new_version(d, name)
        kms = cls(d)
        kms.audit.append(
            "init",
            target=str(d),
            details={"policy_sha256": policy.digest(), "keys": kms.current_ids(policy.all_key_names())},
        )
        return kms

    @staticmethod
    def _new_version(d: Path, name: str) -> int:
        if not _KEY_NAME.match(name):
            raise KmsError(f"invalid key name {name!r}: use letters, digits, '.', '_' and '-'")
        kdir = d / "keys" / name
        _mkdir_private(kdir)
        versions = [int(m.group(1)) for p in kdir.iterdir() if (m := _VERSION.match(p.name))]
        version = max(versions, default=0) + 1
        _write_private(kdir / f"v{version}.key", secrets.token_bytes(32).hex() + "\n")
        return version

    # ------------------------------------------------------------------ keys

    def _read(self, kid: str) -> bytes:
        name, version = parse_key_id(kid)
        path = self.dir / "keys" / name / f"v{version}.key"
        try:
            _check_private(path, "the key file")
            return bytes.fromhex(path.read_text().strip())
        except FileNotFoundError:
            raise KmsError(
                f"no key {kid} in {self.dir}/keys; was the lake protected with another KMS?"
            ) from None
        except ValueError:
            raise KmsError(f"key file {path} is not hex; restore it from the KMS backup") from None

    def versions(self, name: str) -> list[int]:
        """The versions of key ``name`` (ascending; empty when unknown)."""
        kdir = self.dir / "keys" / name
        if not kdir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in kdir.iterdir() if (m := _VERSION.match(p.name)))

    def current_id(self, name: str) -> str:
        """The current (newest) version's id of key ``name``, created at v1 if the policy added it later."""
        versions = self.versions(name)
        if not versions:
            versions = [self._new_version(self.dir, name)]
        return key_id(name, versions[-1])

    def current_ids(self, names: Iterable[str]) -> dict[str, str]:
        """``name -> current key id``."""
        return {n: self.current_id(n) for n in sorted(names)}

    def rotate(self, names: Iterable[str], *, reason: str) -> dict[str, str]:
        """Add a new version of each key (audited); data written from now on uses it."""
        rotated = {n: key_id(n, self._new_version(self.dir, n)) for n in sorted(names)}
        self.audit.append(
            "rotate", target=",".join(sorted(rotated)), details={"new": rotated, "reason": reason}
        )
        return rotated

    def admin_keys(self, names: Iterable[str], *, action: str, target: str) -> ReleasedKeys:
        """Every version of these keys, for protecting (writing) a lake; audited as ``action``."""
        ids = [
            key_id(n, v)
            for n in sorted(set(names))
            for v in self.versions(n) or [parse_key_id(self.current_id(n))[1]]
        ]
        keys = ReleasedKeys({k: self._read(k) for k in ids})
        self.audit.append(
            action, target=target, outcome="ok", details={"keys": list(keys.ids), "token": keys.token}
        )
        return keys

    # ------------------------------------------------------------------ policy

    @property
    def policy(self) -> AccessPolicy:
        """The active policy."""
        return load_policy(self.dir / "policy.yaml")

    def set_policy(
        self,
        policy: AccessPolicy,
        *,
        action: str = "policy-change",
        principal: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace the active policy (audited with both digests)."""
        old = self.policy
        _write_private(self.dir / "policy.yaml", policy.to_yaml())
        self.audit.append(
            action,
            target="policy",
            principal=principal,
            details={"old_sha256": old.digest(), "new_sha256": policy.digest(), **dict(details or {})},
        )
        for name in policy.all_key_names():  # zones/groups added by the new policy get a key now
            self.current_id(name)

    def grant(self, principal: str, role: str, attributes: Mapping[str, str] | None = None) -> AccessPolicy:
        """Give ``principal`` the ``role`` (and set attributes); audited."""
        policy = self.policy.with_grant(principal, role, dict(attributes or {}))
        self.set_policy(
            policy,
            action="grant",
            principal=principal,
            details={"principal": principal, "role": role, "attributes": dict(attributes or {})},
        )
        return policy

    def revoke(self, principal: str, role: str | None = None) -> dict[str, str]:
        """Remove the grant and rotate every key the principal could obtain before (audited).

        Data written after this (``medimg access protect``) uses the new versions, so keys the
        principal kept do not open it; ``protect --rekey`` moves existing data to them too.

        Returns:
            ``key name -> new key id`` of the rotated keys.
        """
        before = self.policy
        could = before.key_names_of(principal)
        after = before.with_revoke(principal, role)
        self.set_policy(
            after, action="revoke", principal=principal, details={"principal": principal, "role": role or "*"}
        )
        return self.rotate(could, reason=f"revoke {principal}")

    # ------------------------------------------------------------------ release

    def release(
        self,
        principal: str,
        table: str,
        columns: list[str] | None,
        purpose: str,
        *,
        lake: LakeStatus,
        table_columns: list[str] | None,
        key_ids: Iterable[str],
        target: str = "",
    ) -> Release:
        """Release the keys ``principal`` needs to read ``columns`` of ``table`` (audited).

        Args:
            principal, table, columns, purpose: the request (see :meth:`AccessPolicy.decide`).
            lake: the lake's status.
            table_columns: the table's columns.
            key_ids: the key ids the table's files are encrypted under (from its manifest).
            target: where the table is (for the audit log).

        Raises:
            AccessDeniedError: the policy denies it (the denial is audited first).
        """
        decision = self.policy.decide(
            principal, table, columns, purpose, lake=lake, table_columns=table_columns
        )
        where = target or table
        if not decision.allowed:
            self.audit.append(
                "key-release",
                target=where,
                principal=principal,
                purpose=purpose,
                outcome="denied",
                details={
                    "table": table,
                    "zone": decision.zone,
                    "columns": columns,
                    "denied": [{"rule": d.rule, "column": d.column} for d in decision.denied],
                },
            )
            raise AccessDeniedError(decision.message)
        names = set(decision.key_names)
        wanted = sorted({k for k in key_ids if parse_key_id(k)[0] in names})
        keys = ReleasedKeys({k: self._read(k) for k in wanted})
        self.audit.append(
            "key-release",
            target=where,
            principal=principal,
            purpose=purpose,
            outcome="allowed",
            details={
                "table": table,
                "zone": decision.zone,
                "role": decision.role,
                "columns": list(decision.columns),
                "rows": decision.rows.model_dump(),
                "keys": list(keys.ids),
                "token": keys.token,
            },
        )
        return Release(decision, keys)

    def authorize_reidentify(self, principal: str, pseudonym: str, vault: str) -> str:
        """Allow (or deny) a re-identification; audited with the pseudonym's kind and digest only.

        Raises:
            AccessDeniedError: no role of ``principal`` has ``reidentify: true``.
        """
        kind = "patient" if pseudonym.startswith("P") else "uid" if pseudonym.startswith("2.25.") else "other"
        details = {
            "pseudonym_kind": kind,
            "pseudonym_sha256": hashlib.sha256(pseudonym.encode()).hexdigest()[:16],
            "vault": vault,
        }
        role = self.policy.may_reidentify(principal)
        if role is None:
            self.audit.append(
                "reidentify", target=vault, principal=principal, outcome="denied", details=details
            )
            raise AccessDeniedError(
                f"access denied: principal {principal!r} may not re-identify: none of its roles "
                f"{self.policy.roles_of(principal)} has reidentify: true [roles.*.reidentify]"
            )
        self.audit.append(
            "reidentify",
            target=vault,
            principal=principal,
            outcome="allowed",
            details={**details, "role": role},
        )
        return role
