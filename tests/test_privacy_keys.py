"""Key loading, keyed pseudonyms and the vault's key-file KMS client."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medimg_spark.errors import ConfigError
from medimg_spark.privacy import (
    KEY_ENV,
    KEY_FILE_ENV,
    DeidKeyError,
    Pseudonymizer,
    PseudonymNotFoundError,
    VaultEntry,
    VaultKeyError,
    generate_key_file,
    load_key,
    reidentify,
    write_vault_file,
)
from medimg_spark.privacy.vault import resolve_vault_key_file


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


def test_missing_key_is_a_clear_error(no_key_env: None) -> None:
    with pytest.raises(DeidKeyError, match=KEY_ENV) as info:
        load_key()
    assert isinstance(info.value, ConfigError)


def test_key_from_env_hex_base64_and_file(
    no_key_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, "ab" * 32)
    assert load_key() == bytes.fromhex("ab" * 32)
    monkeypatch.setenv(KEY_ENV, "q" * 10)
    with pytest.raises(DeidKeyError, match="at least 32"):
        load_key()
    monkeypatch.delenv(KEY_ENV)
    path = generate_key_file(tmp_path / "k" / "deid.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    assert load_key() == load_key(path) and len(load_key(path)) == 32
    with pytest.raises(DeidKeyError, match="already exists"):
        generate_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(DeidKeyError, match="chmod 600"):
        load_key(path)
    with pytest.raises(DeidKeyError, match="cannot read"):
        load_key(tmp_path / "absent.key")


def test_ephemeral_key_is_random(no_key_env: None, tmp_path: Path) -> None:
    a, b = load_key(ephemeral=True), load_key(ephemeral=True)
    assert a != b and len(a) == 32
    with pytest.raises(DeidKeyError, match="not both"):
        load_key(tmp_path / "x.key", ephemeral=True)


def test_pseudonyms_are_keyed_and_deterministic() -> None:
    p1, p2, other = Pseudonymizer(b"k" * 32), Pseudonymizer(b"k" * 32), Pseudonymizer(b"j" * 32)
    uid = p1.uid("1.2.3.4")
    assert uid == p2.uid("1.2.3.4") != other.uid("1.2.3.4")
    assert uid.startswith("2.25.") and len(uid) <= 64 and p1.uid("1.2.3.5") != uid
    assert int(uid[5:]) >> 76 & 0xF == 8  # UUID version 8
    assert p1.patient_pseudonym("id\x1f\x1fX") == p2.patient_pseudonym("id\x1f\x1fX")
    shifts = {p1.date_shift(f"patient-{i}").days for i in range(50)}
    assert all(-3650 <= d <= -1 for d in shifts) and len(shifts) > 40
    assert "k" * 32 not in repr(p1)
    with pytest.raises(DeidKeyError):
        Pseudonymizer(b"short")


def test_vault_roundtrip_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_key_file(tmp_path / "vault.key")
    entries = [VaultEntry("PABC", "patient", "PatientID", "MRN-0042", "PABC")]
    path = write_vault_file(tmp_path / "v", entries, key, run_id="r1")
    assert path is not None and write_vault_file(tmp_path / "v", [], key, run_id="r2") is None
    assert stat.S_IMODE(os.stat(tmp_path / "v").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"MRN-0042" not in path.read_bytes()
    assert reidentify(tmp_path / "v", "PABC", key)["identifiers"] == {"PatientID": "MRN-0042"}
    with pytest.raises(PseudonymNotFoundError, match="not in the vault"):
        reidentify(tmp_path / "v", "PZZZ", key)
    with pytest.raises(OSError, match=r"decrypt|encrypt"):
        pq.read_table(path)
    monkeypatch.delenv("MEDIMG_VAULT_KEY_FILE", raising=False)
    with pytest.raises(VaultKeyError, match="MEDIMG_VAULT_KEY_FILE"):
        resolve_vault_key_file(None)
    monkeypatch.setenv("MEDIMG_VAULT_KEY_FILE", str(key))
    assert resolve_vault_key_file(None) == str(key)


def test_run_deid_validates_paths_before_starting(tmp_path: Path) -> None:
    from medimg_spark.privacy import DeidConfig, DeidConfigError, run_deid

    (tmp_path / "in").mkdir()
    with pytest.raises(DeidConfigError, match="does not exist"):
        run_deid(None, [str(tmp_path / "nope")], str(tmp_path / "out"), DeidConfig(), b"k" * 32)
    with pytest.raises(DeidConfigError, match="separate location"):
        run_deid(
            None,
            [str(tmp_path / "in")],
            str(tmp_path / "out"),
            DeidConfig(),
            b"k" * 32,
            vault_dir=str(tmp_path / "out" / "v"),
        )
    with pytest.raises(DeidConfigError, match="POSIX"):
        run_deid(None, [str(tmp_path / "in")], "s3://bucket/out", DeidConfig(), b"k" * 32)
