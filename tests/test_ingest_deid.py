"""Ingest de-identifies by default: no PHI of real PHI-laden files, nor their paths, reaches any output.

One ingest (module fixture) over the three corpora of real files: deid-data, pydicom's test files
(with its ``dicomdirtests/<PatientID>/…`` folders) and pydicom-data (the files that carry a patient
name or ID), plus copies of real files in folders named after their own header values
(``<PatientName>_DOB<PatientBirthDate>/<PatientID>/…``), an empty file and a text file in such
folders. The PHI set is every identifying header value (tests/phi.py) and every input path.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medimg_spark.io.ingest import format_summary, ingest
from medimg_spark.privacy import DeidConfig, Deidentifier, generate_key_file, reidentify
from medimg_spark.privacy.engine import quiet_pydicom
from medimg_spark.privacy.hook import IngestDeidentifier
from medimg_spark.privacy.keys import normalized_path
from tests.phi import collect_phi, find_phi

KEY = bytes.fromhex("3c" * 32)
PSEUDONYM = re.compile(r"^deid-[0-9a-f]{32}(\.[a-z.]+)?$")
#: Real files copied into folders named after their own header values (and nowhere else).
NAMED = {
    "pydicom": ["test_files/CT_small.dcm", "test_files/MR_small.dcm", "test_files/rtplan.dcm"],
    "deid": ["humans/ctbrain1.dcm"],
}
#: Per corpus, the largest file picked (the test's time budget: one file per patient, the smallest).
MAX_BYTES = {"deid": 5_000_000, "pydicom": 1_000_000, "pydicom-data": 1_000_000}


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        with quiet_pydicom():
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None


def _safe(text: str) -> str:
    return re.sub(r"[/\x00]", "_", text.strip())


def _named_folder(ds: pydicom.Dataset) -> Path:
    """``<PatientName>_DOB<PatientBirthDate>/<PatientID>`` (parts that are empty left out)."""
    name = _safe(str(ds.get("PatientName", "") or ""))
    dob = _safe(str(ds.get("PatientBirthDate", "") or ""))
    pid = _safe(str(ds.get("PatientID", "") or ""))
    first = f"{name}_DOB{dob}" if dob else name
    return Path(*[p for p in (first, pid) if p])


def _per_patient(root: Path, max_bytes: int, skip: set[Path]) -> list[Path]:
    """The smallest file of each patient (name, ID, birth date) of a corpus: its files that carry PHI."""
    chosen: dict[tuple[str, str, str], Path] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p in skip or p.suffix in (".py", ".pyc") or p.stat().st_size > max_bytes:
            continue
        ds = _header(p)
        if ds is None:
            continue
        key = tuple(
            str(ds.get(k, "") or "").strip() for k in ("PatientName", "PatientID", "PatientBirthDate")
        )
        if (key[0] or key[1]) and (key not in chosen or p.stat().st_size < chosen[key].stat().st_size):
            chosen[key] = p  # type: ignore[index]
    return sorted(chosen.values())


def _build_inputs(root: Path) -> dict[str, object]:
    import deid_data

    inp = root / "in"
    pyd = Path(get_testdata_file("CT_small.dcm")).parent.parent  # pydicom/data
    corpora = {
        "deid": (Path(deid_data.__file__).parent / "data", MAX_BYTES["deid"]),
        "pydicom": (pyd, MAX_BYTES["pydicom"]),
        "pydicom-data": (Path(__import__("data_store").__file__).parent / "data", MAX_BYTES["pydicom-data"]),
    }
    named_src = {corpora[c][0] / n for c, names in NAMED.items() for n in names}
    copied: dict[str, int] = {}
    for corpus, (src, max_bytes) in corpora.items():
        files = _per_patient(src, max_bytes, named_src)
        if corpus == "pydicom":  # the case: dicomdirtests/<PatientID>/… and its DICOMDIR
            tests = src / "test_files" / "dicomdirtests"
            files += [p for p in (tests / "77654033").rglob("*") if p.is_file()] + [tests / "DICOMDIR"]
        for p in sorted(set(files)):
            target = inp / corpus / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
        copied[corpus] = len(set(files))
    # real files in folders named after their own PHI (copied nowhere else)
    named: dict[str, Path] = {}
    for corpus, names in NAMED.items():
        for name in names:
            src = corpora[corpus][0] / name
            ds = _header(src)
            assert ds is not None
            target = inp / "named" / _named_folder(ds) / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
            named[f"{corpus}/{src.name}"] = target.resolve()
    ct_folder = named["pydicom/CT_small.dcm"].parent
    (ct_folder / "empty.dcm").write_bytes(b"")  # quarantined unread
    (ct_folder / "notes.txt").write_text("referral letter\n")  # quarantined: not an image
    return {"inp": inp, "named": named, "copied": copied, "ct_folder": ct_folder}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def deid_ingest(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("ingest_deid")
    built = _build_inputs(tmp)
    inp: Path = built["inp"]  # type: ignore[assignment]
    named: dict[str, Path] = built["named"]  # type: ignore[assignment]
    labels = tmp / "labels.csv"
    labels.write_text(f"path,label\n{named['pydicom/MR_small.dcm']},mr-label\n")
    vault = tmp / "vault"
    vault_key = generate_key_file(tmp / "vault.key")
    # the strict Basic Profile: every date, time and UID replaced; no OCR (it changes pixels only, which
    # this byte scan of text does not cover; tests/test_privacy_pixels.py checks redaction)
    config = DeidConfig(ocr="off")
    hook = IngestDeidentifier(
        Deidentifier(config, KEY, allow_burned_in=True), vault_dir=str(vault), vault_key_file=str(vault_key)
    )
    out = tmp / "out"
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        started = time.perf_counter()
        summary = ingest(spark, [str(inp)], str(out), labels_csv=str(labels), deidentify=hook)
        wall = time.perf_counter() - started
        print(f"ingest of {summary['files_seen']} files: {wall:.1f} s")
        # a rerun over the patient-named folders ingests nothing twice
        rerun = ingest(spark, [str(inp / "named")], str(out), deidentify=hook)
    finally:
        logging.getLogger().removeHandler(records)
    return {
        **built,
        "out": out,
        "summary": summary,
        "rerun": rerun,
        "config": config,
        "vault": vault,
        "vault_key": vault_key,
        "logs": records.lines,
        "wall": wall,
    }


def _datasets(root: Path) -> list[pydicom.Dataset]:
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            try:
                with quiet_pydicom():
                    found.append(pydicom.dcmread(p))
            except Exception:
                continue
    return found


def _paths(root: Path) -> list[str]:
    """Every input file and folder path, as a local path and as a ``file:`` URI (PHI: folder names)."""
    found: list[str] = []
    for p in sorted(root.resolve().rglob("*")):
        found += [str(p), f"file:{p}"]
    return found


def _tables(out: Path) -> dict[str, list[dict]]:
    return {
        t: pq.read_table(out / t).drop_columns(["pixels"] if t == "images" else []).to_pylist()
        for t in ("images", "instances", "quarantine")
    }


def test_no_phi_in_any_output_byte_including_paths(deid_ingest) -> None:  # type: ignore[no-untyped-def]
    inp: Path = deid_ingest["inp"]
    checked = collect_phi(_datasets(inp), deid_ingest["config"], KEY)
    assert len(checked) > 300
    assert "SIMPSON^HOMER^J^" in checked and "SGH SPRINGFIELD GENERAL HOSPITAL" in checked
    assert "77654033" in checked  # pydicom's dicomdirtests/<PatientID>/ folder
    folders = sorted({p.name for p in (inp / "named").rglob("*") if p.is_dir()})
    assert "CompressedSamples^CT1" in folders and "1CT1" in folders and any("_DOB" in f for f in folders)
    paths = _paths(inp)
    phi = sorted(set(checked) | set(folders) | set(paths))
    out: Path = deid_ingest["out"]
    blobs: dict[str, bytes] = {}
    for table, rows in _tables(out).items():
        assert rows, table
        blobs[f"{table} (decoded)"] = json.dumps(rows, default=str).encode()
    for p in out.rglob("*"):
        if p.is_file() and p.suffix != ".parquet":
            blobs[str(p.relative_to(out))] = p.read_bytes()  # run summaries, markers
    for p in deid_ingest["vault"].iterdir():  # encrypted at rest: no plaintext identifiers or paths
        blobs[f"vault/{p.name}"] = p.read_bytes()
    for key in ("summary", "rerun"):
        blobs[key] = json.dumps(deid_ingest[key], default=str).encode()
        blobs[f"{key} (printed)"] = format_summary(deid_ingest[key]).encode()
    blobs["driver log"] = "\n".join(deid_ingest["logs"]).encode()
    found = find_phi(phi, blobs)
    s = deid_ingest["summary"]
    print(
        f"PHI values checked: {len(checked)} header values + {len(folders)} folder names + {len(paths)} "
        f"path strings; outputs scanned: {len(blobs)}; found: {len(found)}; files: {s['files_seen']} "
        f"(per corpus {deid_ingest['copied']}); ingest wall time {deid_ingest['wall']:.1f} s"
    )
    assert found == []
    assert not (out / "IDENTIFIED").exists() and s["identified"] is False


def test_every_path_is_a_pseudonym_and_the_vault_reidentifies_it(spark, deid_ingest) -> None:  # type: ignore[no-untyped-def]
    tables = _tables(deid_ingest["out"])
    paths = {r["source_path"] for rows in tables.values() for r in rows}
    assert paths and all(PSEUDONYM.match(p) for p in paths), sorted(
        p for p in paths if not PSEUDONYM.match(p)
    )[:3]
    assert all(p.startswith("deid-") for p in deid_ingest["summary"]["inputs"])
    # deterministic under the key: the named CT's pseudonym, re-identified by the vault holder
    named: dict[str, Path] = deid_ingest["named"]
    ct_path = named["pydicom/CT_small.dcm"]
    pseudo = Deidentifier(deid_ingest["config"], KEY).pseudonymizer.path_pseudonym(str(ct_path))
    assert pseudo.endswith(".dcm")
    ct_rows = [r for r in tables["images"] if r["source_path"] == pseudo]
    assert len(ct_rows) == 1
    found = reidentify(deid_ingest["vault"], pseudo, deid_ingest["vault_key"])
    assert found["kind"] == "path" and normalized_path(found["identifiers"]["source_path"]) == str(ct_path)
    assert found["patient_pseudonym"] == ct_rows[0]["patient_id"]
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert ct_rows[0]["patient_id"] != original.PatientID
    patient = reidentify(deid_ingest["vault"], ct_rows[0]["patient_id"], deid_ingest["vault_key"])
    assert patient["identifiers"]["PatientID"] == original.PatientID
    uid = reidentify(deid_ingest["vault"], ct_rows[0]["sop_instance_uid"], deid_ingest["vault_key"])
    assert original.SOPInstanceUID in json.dumps(uid)
    # the labels CSV (by original path) still matched the pseudonymised file
    mr = Deidentifier(deid_ingest["config"], KEY).pseudonymizer.path_pseudonym(
        str(named["pydicom/MR_small.dcm"])
    )
    assert {r["label"] for r in tables["images"] if r["source_path"] == mr} == {"mr-label"}
    # quarantine of files never read (empty) and not images (text) in a patient-named folder: pseudonyms only
    q = {
        r["error_class"]: r
        for r in tables["quarantine"]
        if r["ingest_run_id"] == deid_ingest["summary"]["run_id"]
    }
    assert q["EmptyFileError"]["source_path"].endswith(".dcm")
    assert "CompressedSamples" not in json.dumps(q, default=str)


def test_path_components_equal_to_header_phi_are_counted(deid_ingest) -> None:  # type: ignore[no-untyped-def]
    s = deid_ingest["summary"]
    # the 4 named copies (name, DOB, ID folders) and pydicom's dicomdirtests/<PatientID>/ files
    dicomdir = [p for p in (deid_ingest["inp"] / "pydicom").rglob("dicomdirtests/*/*/*") if p.is_file()]
    ids = {str(ds.get("PatientID", "")) for ds in map(_header, dicomdir) if ds is not None}
    id_files = [p for p in dicomdir if any(part in ids for part in p.parts)]
    assert len(id_files) >= 5
    assert s["path_phi_files"] >= len(NAMED["pydicom"]) + len(NAMED["deid"]) + len(id_files)
    assert s["path_phi_components"] > s["path_phi_files"]  # name and ID folders both counted
    text = format_summary(s)
    assert f"{s['path_phi_files']} file(s) had {s['path_phi_components']} path component(s)" in text


def test_rerun_ingests_nothing_twice(deid_ingest) -> None:  # type: ignore[no-untyped-def]
    rerun = deid_ingest["rerun"]
    named = [p for p in (deid_ingest["inp"] / "named").rglob("*") if p.is_file()]
    assert rerun["files_seen"] == len(named)
    assert rerun["files_ingested"] == 0 and rerun["frames_written"] == 0 and rerun["quarantined"] == 0
    assert rerun["already_ingested"] == len(named) - 1  # all but the empty file, quarantined unread once
    q = pq.read_table(deid_ingest["out"] / "quarantine").to_pylist()
    assert [r["ingest_run_id"] for r in q].count(rerun["run_id"]) == 0
    assert (
        len([r for r in q if r["error_class"] == "EmptyFileError" and PSEUDONYM.match(r["source_path"])]) >= 1
    )


# -- path pseudonyms, path PHI, messages and crash records without Spark (fast) -------------------


def test_path_pseudonym_is_keyed_deterministic_and_keeps_only_a_known_extension() -> None:
    from medimg_spark.privacy import Pseudonymizer

    p = Pseudonymizer(KEY)
    a = p.path_pseudonym("/data/DOE^JOHN_DOB19700101/1234567/CT.DCM")
    assert PSEUDONYM.match(a) and a.endswith(".dcm") and "DOE" not in a and "1234567" not in a
    assert a == p.path_pseudonym("file:/data/DOE^JOHN_DOB19700101/1234567/CT.DCM")  # URI or local path
    assert a == Pseudonymizer(KEY).path_pseudonym("/data/DOE^JOHN_DOB19700101/1234567/CT.DCM")
    assert a != Pseudonymizer(b"\x01" * 32).path_pseudonym("/data/DOE^JOHN_DOB19700101/1234567/CT.DCM")
    assert p.path_pseudonym("/x/scan.nii.gz").endswith(".nii.gz")
    assert PSEUDONYM.match(p.path_pseudonym("/x/DOE^JOHN")) and "." not in p.path_pseudonym("/x/JOHN.DOE")[5:]


def test_path_components_equal_to_header_values_are_detected() -> None:
    from medimg_spark.privacy.paths import count_path_phi, scrub_path

    ds = pydicom.Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "MRN123"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC42"
    assert count_path_phi("/data/DOE^JOHN_DOB19700101/MRN123/ACC42/1.dcm", ds) == 3
    assert count_path_phi("file:/data/john/doe/x.dcm", ds) == 2  # name components, case ignored
    assert count_path_phi("/data/DOE_JOHN/series_ACC42/x.dcm", ds) == 2  # separators, tokens
    assert count_path_phi("/data/test_files/johnson/x.dcm", ds) == 0
    ds.PatientName = "TEST"
    assert count_path_phi("/data/test_files/x.dcm", ds) == 0  # a name part is not looked for as a token
    msg = (
        "cannot read /data/DOE^JOHN/MRN123/x.dcm (file:/data/DOE^JOHN/MRN123/x.dcm): data truncated in MRN123"
    )
    out = scrub_path(msg, "file:/data/DOE^JOHN/MRN123/x.dcm", "deid-0.dcm")
    assert "DOE" not in out and "MRN123" not in out and "data truncated" in out


def test_rows_and_crash_records_of_a_task_hold_no_path(tmp_path: Path) -> None:
    import hashlib

    from medimg_spark.io.files import CrashGuard, FileContext, process_files

    folder = tmp_path / "CompressedSamples^CT1" / "1CT1"
    folder.mkdir(parents=True)
    ct = folder / "CT_small.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), ct)
    (folder / "notes 1CT1.txt").write_text("x")
    hook = IngestDeidentifier(Deidentifier(DeidConfig(), KEY))
    ctx = FileContext("run-1", deidentify=hook, crash_dir=str(tmp_path / "crash"))
    guard = CrashGuard(ctx.crash_dir, "task-0")  # type: ignore[arg-type]
    rows = process_files(
        iter([(f"file:{ct}", None), (f"file:{folder / 'notes 1CT1.txt'}", None)]), ctx, guard
    )
    first = next(rows)
    mark = (tmp_path / "crash" / "task-0").read_text()
    assert (
        "CompressedSamples" not in mark and "1CT1" not in mark and hook.path_pseudonym(f"file:{ct}") in mark
    )
    rest = list(rows)
    assert {r["source_path"] for r in [first, *rest]} == {
        hook.path_pseudonym(f"file:{ct}"),
        hook.path_pseudonym(f"file:{folder / 'notes 1CT1.txt'}"),
    }
    instance = next(r for r in [first, *rest] if r["_kind"] == "instance")
    assert (
        instance["_path_phi"] == 2 and instance["file_sha256"] == hashlib.sha256(ct.read_bytes()).hexdigest()
    )
    assert all("1CT1" not in (r.get("error_message") or "") for r in rest)
    # the retry of a task whose worker died on this file quarantines it, by pseudonym
    guard.mark(hook.path_pseudonym(f"file:{ct}"))
    retry = list(process_files(iter([(f"file:{ct}", None)]), ctx, CrashGuard(ctx.crash_dir, "task-0")))  # type: ignore[arg-type]
    assert [(r["error_class"], r["source_path"]) for r in retry] == [
        ("WorkerCrashError", hook.path_pseudonym(f"file:{ct}"))
    ]


def test_a_label_taken_from_a_patient_named_folder_is_dropped(tmp_path: Path) -> None:
    from medimg_spark.io.files import FileContext, process_files

    named = tmp_path / "CompressedSamples^CT1" / "CT_small.dcm"
    plain = tmp_path / "PNEUMONIA" / "CT_small.dcm"
    for p in (named, plain):
        p.parent.mkdir()
        shutil.copy(get_testdata_file("CT_small.dcm"), p)
    hook = IngestDeidentifier(Deidentifier(DeidConfig(), KEY))
    ctx = FileContext("run-1", deidentify=hook, label_from_parent_dir=True)
    rows = list(process_files(iter([(str(named), None), (str(plain), None)]), ctx))
    labels = {r["source_path"]: r["label"] for r in rows if r["_kind"] == "image"}
    assert labels == {hook.path_pseudonym(str(named)): None, hook.path_pseudonym(str(plain)): "PNEUMONIA"}
    keep = list(process_files(iter([(str(named), None)]), FileContext("r", label_from_parent_dir=True)))
    assert [r["label"] for r in keep if r["_kind"] == "image"] == ["CompressedSamples^CT1"]  # --keep-phi


def test_phi_scan_finds_a_copied_value_but_not_hex_digits_continuing_a_hash() -> None:
    blobs = {"table": b'{"source_path": "deid-3fabcd12", "patient_id": "abcd", "note": "x1234y"}'}
    found = find_phi(["abcd", "1234", "x1234y", "3fab"], blobs)
    assert found == [("abcd", "table"), ("1234", "table"), ("x1234y", "table")]  # 3fab: only in the hash
    assert find_phi(["abcd"], {"hash": b"deid-3fabcd12"}) == []
    assert find_phi(["045Y", "SMITH"], {"vault": b"P2B12EAF0B045Y\x00SMITH"}) == [("SMITH", "vault")]
