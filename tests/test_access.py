"""Access control on real lake tables: policy decisions enforced by keys, the KMS, the audit chain.

One module fixture ingests real files (pydicom test DICOMs and 50 PneumoniaMNIST frames) into a
tmp lake with the library's ingest (de-identified, with a vault), keeps a plain copy, and protects
the lake with the shipped example policy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file
from pyspark.testing import assertDataFrameEqual

from medimg_spark.access import (
    AccessDeniedError,
    AccessPolicy,
    AuditLog,
    Kms,
    KmsError,
    PolicyError,
    parse_policy,
    shipped_policy_path,
)
from medimg_spark.access.errors import KeyUnavailableError
from medimg_spark.access.lake import decrypt_file, is_encrypted, read_manifest
from medimg_spark.access.spark import protect_lake, read_table, secure_read
from medimg_spark.cli import main

REPO = Path(__file__).resolve().parents[1]
KEY = bytes.fromhex("5a" * 32)
PATIENT = ["patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "source_path"]


def _policy() -> AccessPolicy:
    """The shipped example policy plus a role limited to the derived zone (for a zone denial)."""
    import yaml

    data = yaml.safe_load(shipped_policy_path().read_text())
    data["roles"]["analyst"] = {"zones": ["derived"], "purposes": ["research"]}
    data["principals"]["frank"] = {"roles": ["analyst"]}
    data["zones"]["derived"]["tables"].append("cohort")  # a table with a consent flag column
    data["roles"]["consented"] = {
        "zones": ["derived"],
        "purposes": ["research"],
        "rows": {"flags": ["consent"]},
    }
    data["principals"]["gina"] = {"roles": ["consented"]}
    return parse_policy(data, "test policy")


@pytest.fixture(scope="module")
def lake(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medimg_spark.io.ingest import ingest
    from medimg_spark.privacy import DeidConfig, Deidentifier, generate_key_file
    from medimg_spark.privacy.hook import IngestDeidentifier

    tmp = tmp_path_factory.mktemp("access")
    inp = tmp / "in"
    inp.mkdir()
    d = np.load(REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz")
    np.savez(
        inp / "pneumonia50.npz",
        train_images=d["train_images"][:40],
        train_labels=d["train_labels"][:40],
        val_images=d["val_images"][:10],
        val_labels=d["val_labels"][:10],
    )
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "rtplan.dcm"):
        shutil.copy(get_testdata_file(name), inp / name)
    vault, vault_key = tmp / "vault", generate_key_file(tmp / "vault.key")
    hook = IngestDeidentifier(
        Deidentifier(DeidConfig(ocr="off"), KEY), vault_dir=str(vault), vault_key_file=str(vault_key)
    )
    out = tmp / "lake"
    summary = ingest(spark, [str(inp)], str(out), deidentify=hook)
    assert (
        summary["frames_written"] == 52 and summary["quarantined"] == 1
    )  # the US frame: burned-in text (no OCR here)
    from pyspark.sql import functions as F

    cohort = spark.read.parquet(str(out / "images")).select(
        "image_id", "label", (F.col("label") == "1").alias("consent")
    )
    cohort.write.parquet(str(out / "cohort"))  # consent null where there is no label
    plain = tmp / "plain"
    shutil.copytree(out, plain)
    kms = Kms.init(tmp / "kms", _policy())
    tables = {t.table: t for t in protect_lake(spark, out, kms)}
    return {
        "tmp": tmp,
        "out": out,
        "plain": plain,
        "kms": kms,
        "tables": tables,
        "vault": vault,
        "vault_key": vault_key,
    }


def _last(kms: Kms) -> dict[str, Any]:
    return list(kms.audit.entries())[-1]


def test_protect_encrypts_every_zone_table_and_is_idempotent(spark: Any, lake: dict[str, Any]) -> None:
    out, kms = lake["out"], lake["kms"]
    assert {t: (v.zone, v.status, v.rows) for t, v in lake["tables"].items()} == {
        "images": ("deidentified", "protected", 52),
        "instances": ("deidentified", "protected", 4),
        "quarantine": ("deidentified", "protected", 1),
        "cohort": ("derived", "protected", 52),
    }
    for table in ("images", "instances", "quarantine"):
        manifest = read_manifest(out / table)
        assert manifest is not None and manifest.files
        for rel, keys in manifest.files.items():
            assert is_encrypted(out / table / rel)
            assert keys.footer == "zone.deidentified@v1"
        assert not list((out / table).rglob("*.crc"))  # stale checksums dropped
    images = read_manifest(out / "images")
    assert images is not None and images.partition_columns == ["modality"]
    some = next(iter(images.files.values()))
    assert sorted(some.columns["group.images.patient@v1"]) == sorted(PATIENT)
    # no key opens the files without the KMS: plain Spark and pyarrow fail on the encrypted footer
    with pytest.raises(Exception, match=r"(?i)encrypt|magic|footer|corrupt"):
        spark.read.parquet(str(out / "images")).count()
    with pytest.raises(OSError, match="decryption"):
        pq.read_table(out / "images" / next(iter(images.files)))
    again = protect_lake(spark, out, kms)
    assert [(t.table, t.status, t.files_encrypted) for t in again] == [
        ("images", "unchanged", 0),
        ("instances", "unchanged", 0),
        ("quarantine", "unchanged", 0),
        ("cohort", "unchanged", 0),
    ]
    kdir = kms.dir
    assert oct(kdir.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in (kdir / "keys").rglob("*.key")} == {"0o600"}


def test_a_role_reads_its_allowed_columns(spark: Any, lake: dict[str, Any]) -> None:
    out, plain, kms = lake["out"], lake["plain"], lake["kms"]
    alice = read_table(spark, out, "images", principal="alice", purpose="research", kms=kms)
    assert not set(PATIENT) & set(alice.columns)  # the protected group is left out
    expected = spark.read.parquet(str(plain / "images")).where("modality IN ('OT', 'CR', 'DX')")
    assertDataFrameEqual(alice, expected.select(*alice.columns))  # row condition: OT frames only
    assert alice.count() == 50
    entry = _last(kms)
    assert (entry["action"], entry["outcome"], entry["principal"], entry["purpose"]) == (
        "key-release",
        "allowed",
        "alice",
        "research",
    )
    assert entry["details"]["keys"] == ["zone.deidentified@v1"]  # never the patient group's key
    carol = read_table(
        spark,
        out,
        "images",
        principal="carol",
        purpose="quality",
        columns=["image_id", "patient_id", "modality"],
        kms=kms,
    )
    assertDataFrameEqual(
        carol, spark.read.parquet(str(plain / "images")).select("image_id", "patient_id", "modality")
    )
    assert carol.count() == 52


def test_a_consent_flag_keeps_only_consenting_rows(spark: Any, lake: dict[str, Any]) -> None:
    gina = read_table(spark, lake["out"], "cohort", principal="gina", purpose="research", kms=lake["kms"])
    expected = spark.read.parquet(str(lake["plain"] / "cohort")).where("consent")
    assertDataFrameEqual(gina, expected)
    assert 0 < gina.count() < 50


def test_forbidden_column_or_zone_fails_before_reading_and_is_audited(lake: dict[str, Any]) -> None:
    out, kms = lake["out"], lake["kms"]
    # secure_read has no Spark session: the decision comes before any data is read
    with pytest.raises(AccessDeniedError) as err:
        secure_read(
            out, "images", principal="alice", purpose="research", columns=["image_id", "patient_id"], kms=kms
        )
    text = str(err.value)
    assert "'alice'" in text and "'patient_id'" in text and "'images'" in text
    assert "roles.researcher.column_groups" in text
    entry = _last(kms)
    assert (entry["action"], entry["outcome"], entry["principal"]) == ("key-release", "denied", "alice")
    assert entry["details"]["denied"] == [{"rule": "roles.researcher.column_groups", "column": "patient_id"}]
    with pytest.raises(
        AccessDeniedError, match=r"role 'analyst' .* no access to zone 'deidentified'.*roles\.analyst\.zones"
    ):
        secure_read(out, "instances", principal="frank", purpose="research", kms=kms)
    assert (_last(kms)["principal"], _last(kms)["outcome"]) == ("frank", "denied")
    with pytest.raises(
        AccessDeniedError, match=r"may read only tables .* not 'images'.*roles\.auditor\.tables"
    ):
        secure_read(out, "images", principal="dave", purpose="audit", kms=kms)
    with pytest.raises(AccessDeniedError, match=r"principal 'mallory' has no role"):
        secure_read(out, "images", principal="mallory", purpose="research", kms=kms)


def test_abac_project_and_purpose_mismatch_are_denied(lake: dict[str, Any]) -> None:
    out, kms = lake["out"], lake["kms"]
    with pytest.raises(
        AccessDeniedError,
        match=r"attribute project in \['pneumonia'\]; principal 'bob' has project='cardiology'",
    ):
        secure_read(out, "images", principal="bob", purpose="research", kms=kms)
    with pytest.raises(AccessDeniedError, match=r"not 'marketing'.*roles\.researcher\.purposes"):
        secure_read(out, "images", principal="alice", purpose="marketing", kms=kms)
    # the same table of an identified lake (--keep-phi) is in the identified zone: not the researcher's
    identified = kms.policy.decide("alice", "images", ["image_id"], "research", lake="identified")
    assert not identified.allowed and identified.zone == "identified"
    assert identified.denied[0].rule == "roles.researcher.zones"
    # a row condition the table cannot enforce fails closed
    policy = kms.policy
    decision = policy.decide("alice", "images", ["image_id"], "research", table_columns=["image_id", "label"])
    assert not decision.allowed and decision.denied[0].rule == "roles.researcher.rows"


def test_a_revoked_principal_loses_access_to_new_data(
    spark: Any, lake: dict[str, Any], tmp_path: Path
) -> None:
    tmp = lake["tmp"]
    out = tmp / "revoke-lake"
    shutil.copytree(lake["plain"], out)
    kms = Kms.init(tmp_path / "kms", _policy())
    protect_lake(spark, out, kms, tables=["images"])
    kept = secure_read(
        out, "images", principal="alice", purpose="research", kms=kms
    ).plan  # alice keeps her keys
    old_files = set(kept.files)
    rotated = kms.revoke("alice")
    assert rotated == {"zone.deidentified": "zone.deidentified@v2", "zone.derived": "zone.derived@v2"}
    with pytest.raises(AccessDeniedError, match="principal 'alice' has no role"):
        secure_read(out, "images", principal="alice", purpose="research", kms=kms)
    # new data arrives (a Spark append of real rows), then is protected under the new key versions
    new_rows = spark.read.parquet(str(lake["plain"] / "images")).where("modality = 'OT'").limit(5)
    new_rows.write.mode("append").partitionBy("modality").parquet(str(out / "images"))
    (t,) = protect_lake(spark, out, kms, tables=["images"])
    assert (t.files_encrypted, t.rows) == (1, 57)
    manifest = read_manifest(out / "images")
    assert manifest is not None
    (new,) = set(manifest.files) - old_files
    assert manifest.files[new].footer == "zone.deidentified@v2"
    with pytest.raises(KeyUnavailableError, match=r"zone\.deidentified@v2"):
        decrypt_file(kept, new)  # alice's old keys do not open data written after the revoke
    old_ot = next(f for f in old_files if "modality=OT" in f)
    assert decrypt_file(kept, old_ot).num_rows == 50  # older data needs --rekey ...
    protect_lake(spark, out, kms, tables=["images"], rekey=True)
    with pytest.raises(KeyUnavailableError):
        decrypt_file(kept, old_ot)  # ... after which her old keys open nothing
    carol = read_table(
        spark, out, "images", principal="carol", purpose="quality", columns=["image_id"], kms=kms
    )
    assert carol.count() == 57  # still allowed: every file, old and new, under the released versions
    # a policy change that protects one more column re-encrypts every file on the next protect
    data = kms.policy.model_dump(mode="json")
    data["column_groups"]["images"]["labels"] = ["label"]
    kms.set_policy(parse_policy(data))
    (t,) = protect_lake(spark, out, kms, tables=["images"])
    assert (t.status, t.files_encrypted) == ("rekeyed", len(old_files) + 1)
    manifest = read_manifest(out / "images")
    assert manifest is not None
    assert all(f.columns.get("group.images.labels@v1") == ["label"] for f in manifest.files.values())
    with pytest.raises(AccessDeniedError, match=r"column 'label' .* group images\.labels"):
        secure_read(out, "images", principal="carol", purpose="quality", columns=["label"], kms=kms)
    assert [e["action"] for e in kms.audit.entries()][-4:-2] == ["policy-change", "admin-key-release"]
    assert kms.audit.verify().ok


def _tampered(kms: Kms, tmp: Path, how: str) -> AuditLog:
    d = tmp / how
    d.mkdir()
    shutil.copy(kms.audit.path, d / "audit.jsonl")
    shutil.copy(kms.audit.head_path, d / "audit.head")
    path = d / "audit.jsonl"
    lines = path.read_text().splitlines()
    if how == "edit":
        e = json.loads(lines[2])
        e["outcome"] = "allowed" if e["outcome"] != "allowed" else "denied"
        lines[2] = json.dumps(e, sort_keys=True, separators=(",", ":"))
    elif how == "delete":
        del lines[2]
    elif how == "reorder":
        lines[2], lines[3] = lines[3], lines[2]
    elif how == "truncate":
        lines = lines[:-1]
    elif how == "rewrite":  # recompute every hash from the edited entry on, without the audit key
        import hashlib

        from medimg_spark.access.audit import _canon

        entries = [json.loads(x) for x in lines]
        entries[2]["principal"] = "nobody"
        for i in range(2, len(entries)):
            entries[i]["prev"] = entries[i - 1]["hash"]
            body = {k: v for k, v in entries[i].items() if k not in ("hash", "mac")}
            entries[i]["hash"] = hashlib.sha256(_canon(body)).hexdigest()
        lines = [json.dumps(e) for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return AuditLog(path, kms._read("audit@v1"))


@pytest.mark.parametrize(
    ("how", "first_bad", "reason"),
    [
        ("edit", 3, "edited"),
        ("delete", 3, "deleted"),
        ("reorder", 3, "sequence number"),
        ("truncate", None, "dropped at the end"),
        ("rewrite", 3, "MAC"),
    ],
)
def test_audit_tampering_is_detected(
    lake: dict[str, Any], tmp_path: Path, how: str, first_bad: int | None, reason: str
) -> None:
    kms = lake["kms"]
    assert kms.audit.verify().ok
    n = kms.audit.verify().entries
    assert n >= 5
    result = _tampered(kms, tmp_path, how).verify()
    assert not result.ok and reason in result.reason
    assert result.first_bad == (first_bad if first_bad is not None else n)


def test_policy_validation_errors_name_the_key_and_fix() -> None:
    import yaml

    base = yaml.safe_load(shipped_policy_path().read_text())
    bad = json.loads(json.dumps(base))
    bad["roles"]["researcher"]["zone"] = ["derived"]
    with pytest.raises(
        PolicyError, match=r"roles\.researcher\.zone: Extra inputs.*remove it or fix its spelling"
    ):
        parse_policy(bad)
    bad = json.loads(json.dumps(base))
    bad["roles"]["researcher"]["zones"] = ["deidentfied"]
    with pytest.raises(
        PolicyError, match=r"roles\.researcher\.zones: unknown zone 'deidentfied'; choose from"
    ):
        parse_policy(bad)
    bad = json.loads(json.dumps(base))
    bad["column_groups"]["images"]["extra"] = ["patient_id"]
    with pytest.raises(PolicyError, match=r"column 'patient_id' is in groups 'patient' and 'extra'"):
        parse_policy(bad)
    bad = json.loads(json.dumps(base))
    bad["principals"]["alice"]["roles"] = ["admin"]
    with pytest.raises(PolicyError, match=r"principals\.alice\.roles: unknown role 'admin'"):
        parse_policy(bad)
    bad = json.loads(json.dumps(base))
    del bad["roles"]["auditor"]["purposes"]
    with pytest.raises(PolicyError, match=r"roles\.auditor\.purposes: Field required \(add it\)"):
        parse_policy(bad)
    assert (
        parse_policy(base).digest()
        == parse_policy(yaml.safe_load((REPO / "conf" / "access-policy.yaml").read_text())).digest()
    )


def test_kms_refuses_a_readable_directory(tmp_path: Path) -> None:
    kms = Kms.init(tmp_path / "kms", _policy())
    kms.dir.chmod(0o755)
    with pytest.raises(KmsError, match="chmod 700"):
        Kms(kms.dir)
    with pytest.raises(KmsError, match="not a KMS directory"):
        Kms(tmp_path)


def test_cli_exit_codes_and_reidentify_audit(
    lake: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kms, out = lake["kms"], str(lake["out"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("zones: {}\nroles: {}\n")
    assert main(["access", "init", "--kms", str(tmp_path / "k"), "--policy", str(bad)]) == 2
    assert "zones" in capsys.readouterr().err
    assert (
        main(["access", "protect", "--kms", str(kms.dir), "--out", str(tmp_path)]) == 2
    )  # not a lake: no Spark
    assert "is not a medimg lake" in capsys.readouterr().err
    assert main(["access", "protect", "--kms", str(kms.dir), "--out", out, "--table", "imagez"]) == 2
    assert "--table imagez: not in any zone" in capsys.readouterr().err
    assert (
        main(
            ["access", "grant", "--kms", str(kms.dir), "--principal", "x", "--role", "r", "--attr", "novalue"]
        )
        == 2
    )
    assert "--attr 'novalue': write KEY=VALUE" in capsys.readouterr().err
    assert (
        main(["access", "check", "--principal", "a", "--table", "images", "--purpose", "p"]) == 2
    )  # no --kms
    args = ["--kms", str(kms.dir), "--out", out, "--table", "images", "--purpose", "research"]
    assert main(["access", "check", "--principal", "alice", *args]) == 0
    assert main(["access", "check", "--principal", "alice", "--columns", "source_path", *args]) == 1
    assert "may not read column 'source_path'" in capsys.readouterr().out
    assert main(["access", "read", "--principal", "alice", "--columns", "source_path", *args]) == 1
    assert "medimg: failed: access denied" in capsys.readouterr().err
    # reidentify: audited with the pseudonym's kind and a digest, never the identifiers
    import pyarrow.compute as pc

    from medimg_spark.privacy import read_vault

    vault = read_vault(lake["vault"], lake["vault_key"])
    patient = vault.filter(pc.equal(vault["kind"], "patient"))
    pseudonym, original = patient["pseudonym"][0].as_py(), patient["original"][0].as_py()
    re_args = [
        "reidentify",
        "--vault",
        str(lake["vault"]),
        "--vault-key-file",
        str(lake["vault_key"]),
        "--pseudonym",
        pseudonym,
        "--kms",
        str(kms.dir),
    ]
    assert main([*re_args, "--principal", "alice"]) == 1
    assert "may not re-identify" in capsys.readouterr().err
    assert main([*re_args]) == 2  # a KMS but no principal
    capsys.readouterr()
    assert main([*re_args, "--principal", "carol"]) == 0
    assert original in capsys.readouterr().out
    denied, allowed = [e for e in kms.audit.entries() if e["action"] == "reidentify"][-2:]
    assert (denied["principal"], denied["outcome"], allowed["principal"], allowed["outcome"]) == (
        "alice",
        "denied",
        "carol",
        "allowed",
    )
    assert allowed["details"]["pseudonym_kind"] == "patient"
    assert original not in kms.audit.path.read_text() and pseudonym not in kms.audit.path.read_text()
    assert main(["access", "rotate", "--kms", str(kms.dir), "--key", "zone.nope"]) == 2
    assert "--key zone.nope: not a key of the policy" in capsys.readouterr().err
    assert main(["access", "audit", "--kms", str(kms.dir), "--verify", "--tail", "3"]) == 0
    assert "audit chain OK" in capsys.readouterr().out
    broken = _tampered(kms, tmp_path, "delete").path.parent
    shutil.copytree(kms.dir / "keys", broken / "keys")
    shutil.copy(kms.dir / "policy.yaml", broken / "policy.yaml")
    broken.chmod(0o700)
    assert main(["access", "audit", "--kms", str(broken), "--verify", "--tail", "0"]) == 1
    assert "audit chain BROKEN at entry 3" in capsys.readouterr().out


def test_access_imports_without_spark() -> None:
    from tests.test_layers import _run

    out = _run(
        """
        import json
        import medimg_spark.access, medimg_spark.access.commands, medimg_spark.access.lake
        from medimg_spark.access import shipped_policy_path, load_policy
        policy = load_policy(str(shipped_policy_path()))
        print(json.dumps({"zones": sorted(policy.zones)}))
        """
    )
    assert out == {"zones": ["deidentified", "derived", "identified"]}


def test_format_medimg_secure_reads_with_options_and_denies_at_load(spark: Any, lake: dict[str, Any]) -> None:
    from medimg_spark.access.spark import register

    register(spark)
    kms, images = lake["kms"], str(lake["out"] / "images")

    def reader(columns: str) -> Any:
        return (
            spark.read.format("medimg-secure")
            .option("principal", "alice")
            .option("purpose", "research")
            .option("columns", columns)
            .option("kms", str(kms.dir))
        )

    df = reader("image_id,label,modality").load(images)
    expected = spark.read.parquet(str(lake["plain"] / "images")).where("modality = 'OT'")
    assertDataFrameEqual(df, expected.select("image_id", "label", "modality"))
    with pytest.raises(Exception, match=r"may not read column 'patient_id' of table 'images'"):
        reader("image_id,patient_id").load(images)
    assert (_last(kms)["outcome"], _last(kms)["details"]["columns"]) == ("denied", ["image_id", "patient_id"])


def test_ingest_refuses_a_protected_lake_before_any_spark_job(lake: dict[str, Any]) -> None:
    from medimg_spark.io.ingest import NotALakeError, prepare_lake

    with pytest.raises(NotALakeError, match="encrypted by `medimg access protect`"):
        prepare_lake(str(lake["out"]))
    assert prepare_lake(str(lake["plain"])) == "lake"
