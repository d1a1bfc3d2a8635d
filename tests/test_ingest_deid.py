"""Ingest de-identifies by default: no PHI of real PHI-laden files reaches any analytics output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.io.ingest import ingest
from medimg_spark.privacy import DeidConfig, Deidentifier, generate_key_file, reidentify
from medimg_spark.privacy.hook import IngestDeidentifier
from tests.phi import collect_phi, find_phi

KEY = bytes.fromhex("3c" * 32)


@pytest.fixture(scope="module")
def deid_ingest(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    import deid_data

    tmp = tmp_path_factory.mktemp("ingest_deid")
    inp = tmp / "in"
    shutil.copytree(
        Path(deid_data.__file__).parent / "data", inp / "deid", ignore=shutil.ignore_patterns("*.py")
    )
    for name in (
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "nested_priv_SQ.dcm",
        "priv_SQ.dcm",
        "test-SR.dcm",
    ):
        shutil.copy(get_testdata_file(name), inp / name)
    vault = tmp / "vault"
    vault_key = generate_key_file(tmp / "vault.key")
    config = DeidConfig()  # the strict Basic Profile: every date, time and UID replaced
    hook = IngestDeidentifier(
        Deidentifier(config, KEY, allow_burned_in=True), vault_dir=str(vault), vault_key_file=str(vault_key)
    )
    out = tmp / "out"
    summary = ingest(spark, [str(inp)], str(out), deidentify=hook)
    return {
        "inp": inp,
        "out": out,
        "summary": summary,
        "config": config,
        "vault": vault,
        "vault_key": vault_key,
    }


def _datasets(root: Path) -> list[pydicom.Dataset]:
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            try:
                found.append(pydicom.dcmread(p))
            except Exception:
                continue
    return found


def test_no_phi_in_ingest_outputs(deid_ingest) -> None:  # type: ignore[no-untyped-def]
    checked = collect_phi(_datasets(deid_ingest["inp"]), deid_ingest["config"], KEY)
    assert len(checked) > 150
    assert "SIMPSON^HOMER^J^" in checked and "SGH SPRINGFIELD GENERAL HOSPITAL" in checked
    out: Path = deid_ingest["out"]
    blobs: dict[str, bytes] = {}
    for table in ("images", "instances", "quarantine"):
        rows = pq.read_table(out / table).drop_columns(["pixels"] if table == "images" else []).to_pylist()
        assert rows, table
        blobs[f"{table} (decoded)"] = json.dumps(rows, default=str).encode()
    for p in out.rglob("*"):
        if p.is_file() and p.suffix != ".parquet":
            blobs[str(p.relative_to(out))] = p.read_bytes()  # run summaries, markers
    for p in deid_ingest["vault"].iterdir():  # encrypted at rest: no plaintext identifiers
        blobs[f"vault/{p.name}"] = p.read_bytes()
    found = find_phi(checked, blobs)
    print(f"PHI values checked: {len(checked)}; outputs scanned: {len(blobs)}; found: {len(found)}")
    assert found == []
    assert not (out / "IDENTIFIED").exists() and deid_ingest["summary"]["identified"] is False


def test_metadata_columns_are_pseudonyms_and_vault_reidentifies(spark, deid_ingest) -> None:  # type: ignore[no-untyped-def]
    images = spark.read.parquet(str(deid_ingest["out"] / "images"))
    rows = images.select("patient_id", "study_instance_uid", "sop_instance_uid", "source_path").collect()
    assert rows
    ct = [r for r in rows if r.source_path.endswith("CT_small.dcm")]
    assert ct and all(r.study_instance_uid.startswith("2.25.") for r in rows if r.study_instance_uid)
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ct[0].patient_id != original.PatientID
    found = reidentify(deid_ingest["vault"], ct[0].patient_id, deid_ingest["vault_key"])
    assert found["identifiers"]["PatientID"] == original.PatientID
    found = reidentify(deid_ingest["vault"], ct[0].sop_instance_uid, deid_ingest["vault_key"])
    assert original.SOPInstanceUID in json.dumps(found)
