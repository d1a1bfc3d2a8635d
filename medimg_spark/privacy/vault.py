"""Re-identification vault: pseudonym -> original identifiers, in encrypted Parquet.

Files use Parquet modular encryption (``pyarrow.parquet.encryption``) with an encrypted footer
and an encrypted ``original`` column, so neither the schema nor any value can be read without
the master key. Data keys are wrapped by :class:`KeyFileKmsClient` with AES-256-GCM under a
master key read from a key file (hex, mode 0600; see
:func:`medimg_spark.privacy.keys.generate_key_file`). The vault directory is created 0700 and
its files 0600. Keep it apart from analytics output.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe

from medimg_spark.privacy.engine import VaultEntry
from medimg_spark.privacy.errors import DeidKeyError, PseudonymNotFoundError, VaultError, VaultKeyError
from medimg_spark.privacy.keys import read_key_file

VAULT_KEY_FILE_ENV = "MEDIMG_VAULT_KEY_FILE"
FOOTER_KEY_ID = "medimg-vault-footer"
COLUMN_KEY_ID = "medimg-vault-columns"
ENCRYPTED_COLUMNS = ("original", "attribute")

VAULT_SCHEMA = pa.schema(
    [
        pa.field("pseudonym", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("attribute", pa.string(), nullable=False),
        pa.field("original", pa.string(), nullable=False),
        pa.field("patient_pseudonym", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("recorded_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def _aesgcm(master: bytes) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:  # pragma: no cover - depends on the environment
        raise VaultError(
            "the re-identification vault needs the 'cryptography' package; pip install cryptography"
        ) from None
    return AESGCM(hashlib.sha256(b"medimg-vault-kek\x00" + master).digest())


class KeyFileKmsClient(pe.KmsClient):  # type: ignore[misc]
    """KMS client wrapping Parquet data keys with AES-256-GCM under a key-file master key.

    The wrapped form is ``base64(nonce || ciphertext+tag)``; the master-key identifier is the
    associated data, so a key wrapped for one identifier cannot be unwrapped as another.
    """

    def __init__(self, kms_connection_config: pe.KmsConnectionConfig) -> None:
        pe.KmsClient.__init__(self)
        key_file = kms_connection_config.custom_kms_conf.get("key_file", "")
        try:
            master = read_key_file(key_file, what="vault master key")
        except DeidKeyError as exc:
            raise VaultKeyError(str(exc)) from None
        self._aead = _aesgcm(master)

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        """Encrypt a data key."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, bytes(key_bytes), master_key_identifier.encode())
        return base64.b64encode(nonce + sealed).decode("ascii")

    def unwrap_key(self, wrapped_key: str | bytes, master_key_identifier: str) -> bytes:
        """Decrypt a data key; fails (InvalidTag) under a different master key."""
        raw = base64.b64decode(wrapped_key)
        return bytes(self._aead.decrypt(raw[:12], raw[12:], master_key_identifier.encode()))


def _factory() -> pe.CryptoFactory:
    return pe.CryptoFactory(lambda config: KeyFileKmsClient(config))


def _kms_config(key_file: str | os.PathLike[str]) -> pe.KmsConnectionConfig:
    return pe.KmsConnectionConfig(custom_kms_conf={"key_file": os.fspath(key_file)})


def resolve_vault_key_file(explicit: str | os.PathLike[str] | None = None) -> str:
    """The vault master-key file: ``explicit`` or ``$MEDIMG_VAULT_KEY_FILE``.

    Raises:
        VaultKeyError: When neither is set or the file is unusable.
    """
    path = os.fspath(explicit) if explicit else os.environ.get(VAULT_KEY_FILE_ENV)
    if not path:
        raise VaultKeyError(
            "a vault directory was given but no vault master-key file: set DeidConfig.vault_key_file or "
            f"${VAULT_KEY_FILE_ENV} to a 0600 key file (create one with "
            "medimg_spark.privacy.generate_key_file)"
        )
    try:
        read_key_file(path, what="vault master key")
    except DeidKeyError as exc:
        raise VaultKeyError(str(exc)) from None
    return path


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and set it to mode 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p, 0o700)
    return p


def write_vault_file(
    vault_dir: str | os.PathLike[str],
    entries: Iterable[VaultEntry],
    key_file: str | os.PathLike[str],
    *,
    run_id: str,
) -> Path | None:
    """Write one encrypted vault file (mode 0600) under ``vault_dir`` (mode 0700).

    Returns:
        The file written, or ``None`` when there were no entries.
    """
    rows = list(dict.fromkeys(entries))
    if not rows:
        return None
    directory = ensure_private_dir(vault_dir)
    now = _dt.datetime.now(_dt.UTC)
    table = pa.Table.from_pylist(
        [{**e._asdict(), "run_id": run_id, "recorded_at": now} for e in rows], schema=VAULT_SCHEMA
    )
    config = pe.EncryptionConfiguration(
        footer_key=FOOTER_KEY_ID,
        column_keys={COLUMN_KEY_ID: list(ENCRYPTED_COLUMNS)},
        encryption_algorithm="AES_GCM_V1",
        plaintext_footer=False,
        double_wrapping=True,
    )
    props = _factory().file_encryption_properties(_kms_config(key_file), config)
    path = directory / f"vault-{run_id}-{uuid.uuid4().hex}.parquet"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        pq.write_table(table, fh, encryption_properties=props)
    os.chmod(path, 0o600)
    return path


def read_vault(vault_dir: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> pa.Table:
    """Decrypt and concatenate every vault file of ``vault_dir``.

    Raises:
        VaultError: When the directory holds no vault file or a file cannot be decrypted with
            this key.
    """
    files = sorted(Path(vault_dir).glob("vault-*.parquet"))
    if not files:
        raise VaultError(f"no vault files (vault-*.parquet) in {vault_dir}; check the path")
    props = _factory().file_decryption_properties(_kms_config(key_file))
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, decryption_properties=props))
        except VaultKeyError:
            raise
        except Exception as exc:
            raise VaultKeyError(
                f"cannot decrypt vault file {f.name} with the master key in {key_file} "
                f"({type(exc).__name__}); use the key file the vault was written with"
            ) from None
    return pa.concat_tables(tables)


def reidentify(vault_dir: str | os.PathLike[str], pseudonym: str, key_file: str | os.PathLike[str]) -> dict:
    """Look a pseudonym up in the vault.

    Args:
        vault_dir: The vault directory given to ``run_deid``.
        pseudonym: A patient pseudonym (``P…``) or a replacement UID (``2.25.…``).
        key_file: The vault master-key file.

    Returns:
        ``{"pseudonym", "kind", "patient_pseudonym", "identifiers": {attribute: original}}``.

    Raises:
        PseudonymNotFoundError: When the vault has no entry for ``pseudonym``.
        VaultKeyError: When the key cannot decrypt the vault.
    """
    table = read_vault(vault_dir, key_file)
    rows = [r for r in table.to_pylist() if r["pseudonym"] == pseudonym]
    if not rows:
        raise PseudonymNotFoundError(
            f"pseudonym {pseudonym!r} is not in the vault at {vault_dir}; check the value and the vault path"
        )
    kinds = sorted({r["kind"] for r in rows})
    identifiers: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: r["recorded_at"]):
        identifiers[r["attribute"]] = r["original"]
    return {
        "pseudonym": pseudonym,
        "kind": kinds[0] if len(kinds) == 1 else ",".join(kinds),
        "patient_pseudonym": rows[0]["patient_pseudonym"],
        "identifiers": identifiers,
    }
