"""The ingest fuzz harness (``benchmarks/fuzz.py``): its mutation operators, and a seeded run of the real CLI.

The seeded run ingests 520 mutated files (every operator, every odd file name, the compression bombs at
1/8 of their full size so the run stays within a few minutes on 2 cores) with ``medimg ingest`` and
asserts every property the harness checks: exit code 0, each file accounted for exactly once, a
consistent run summary, no silent pixel loss, consistent frame counts, unmodified seeds ending alike,
Python workers within 2.5 GiB, and no PHI of the seed files in any output byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fuzz  # noqa: E402

RUN_N = 520
RUN_SEED = 20240607
BOMB_SCALE = 0.125


@pytest.fixture(scope="module")
def seeds() -> dict[str, fuzz.Seed]:
    return {s.name: s for s in fuzz.build_seeds()}


def test_seed_files_cover_every_format(seeds: dict[str, fuzz.Seed]) -> None:
    formats = {s.fmt for s in seeds.values()}
    assert formats == {"dicom", "png", "jpeg", "tiff", "nifti1", "nifti2", "npz", "gzip"}
    dicom = [s for s in seeds.values() if s.fmt == "dicom"]
    assert 15 <= len(dicom) <= 25
    syntaxes = set()
    for s in dicom:
        meta = next((e for e in s.info["elements"] if e.tag == 0x00020010), None)
        if meta is not None:
            syntaxes.add(
                s.data[meta.value_offset : meta.value_offset + meta.length].rstrip(b"\x00 ").decode()
            )
    # implicit, explicit LE/BE, deflated, RLE, JPEG baseline, JPEG-LS, JPEG 2000
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        assert uid in syntaxes
    for uid in (
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    ):
        assert uid in syntaxes
    ct = seeds["dicom/CT_small.dcm"]
    pixels = pydicom.dcmread(io.BytesIO(ct.data)).PixelData
    assert ct.pixel_start is not None and ct.data[ct.pixel_start : ct.pixel_end] == pixels


@pytest.mark.parametrize("op", sorted(fuzz.OPS))
def test_operators_are_deterministic(seeds: dict[str, fuzz.Seed], op: str) -> None:
    changed = 0
    for seed in seeds.values():
        first = fuzz.OPS[op](seed, random.Random(f"7:{seed.name}"))
        again = fuzz.OPS[op](seed, random.Random(f"7:{seed.name}"))
        assert first == again, (op, seed.name)
        if first is not None:
            assert first[0] != seed.data and "variant" in first[1]
            changed += 1
    assert changed >= 5, op


def test_flips_stay_in_their_region(seeds: dict[str, fuzz.Seed]) -> None:
    ct = seeds["dicom/CT_small.dcm"]
    header_end = ct.info["pixel_elem_offset"]
    assert ct.pixel_start is not None
    for k in range(20):
        data, params = fuzz.op_flip_pixels(ct, random.Random(k)) or (b"", {})
        assert data[: ct.pixel_start] == ct.data[: ct.pixel_start] and data != ct.data, params
        data, params = fuzz.op_flip_header(ct, random.Random(k)) or (b"", {})
        assert data[header_end:] == ct.data[header_end:] and data[:128] == ct.data[:128], params
        assert data != ct.data


def test_truncate_is_a_prefix(seeds: dict[str, fuzz.Seed]) -> None:
    for seed in (seeds["png/chest8.png"], seeds["nifti1/anatomical.nii"], seeds["dicom/MR_small_RLE.dcm"]):
        data, params = fuzz.op_truncate(seed, random.Random(3)) or (b"", {})
        assert 0 < len(data) < len(seed.data) and seed.data.startswith(data)
        assert params["cut"] == len(data)


def test_huge_length_writes_the_length_field(seeds: dict[str, fuzz.Seed]) -> None:
    ct = seeds["dicom/CT_small.dcm"]
    by_tag = {f"({e.tag >> 16:04X},{e.tag & 0xFFFF:04X})": e for e in ct.info["elements"]}
    variants = []
    for k in range(60):
        data, params = fuzz._huge_length_dicom(ct, random.Random(k)) or (b"", {})
        variants.append(params["variant"])
        if "length" in params:
            elem = by_tag[params["variant"][:11]]
            fmt = "<I" if elem.len_size == 4 else "<H"
            assert (
                struct.unpack(fmt, data[elem.len_offset : elem.len_offset + elem.len_size])[0]
                == params["length"]
            )
            assert len(data) == len(ct.data)
    assert any(v.startswith("(0002,0000)=") for v in variants)
    assert any(v.startswith("(0002,0002) length") for v in variants)
    assert any(v.endswith("length swallow") for v in variants)
    assert any("0xFFFFFFF0" in v for v in variants)


def test_absurd_dims(seeds: dict[str, fuzz.Seed]) -> None:
    ct = seeds["dicom/CT_small.dcm"]
    for k in range(30):
        data, params = fuzz._absurd_dims_dicom(ct, random.Random(k)) or (b"", {})
        if params["variant"].startswith("Rows+Columns=65535"):
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            assert ds.Rows == 65535 and ds.Columns == 65535
            break
    else:
        pytest.fail("no Rows+Columns=65535 in 30 draws")
    png = seeds["png/chest8.png"]
    for k in range(10):
        data, params = fuzz._absurd_dims_png(png, random.Random(k)) or (b"", {})
        assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29]), params  # IHDR CRC valid
        assert data[12:29] != png.data[12:29]
    nii = seeds["nifti1/anatomical.nii"]
    variants = {fuzz._absurd_dims_nifti(nii, random.Random(k))[1]["variant"] for k in range(40)}  # type: ignore[index]
    assert any("=32767" in v for v in variants) and any("=-1" in v for v in variants)


def test_bombs_are_small_and_expand(seeds: dict[str, fuzz.Seed]) -> None:
    size = 64 * fuzz.MIB
    bomb = fuzz.gzip_of_zeros(size, prefix=b"PREFIX")
    assert len(bomb) < size // 900
    out = gzip.decompress(bomb)
    assert len(out) == size and out.startswith(b"PREFIX\x00") and out.count(0) == size - 6
    npz = fuzz.npz_bomb((1024, 256, 256))
    assert len(npz) < 1024 * 256 * 256 // 900
    with np.load(io.BytesIO(npz)) as z:
        images = z["train_images"]
        assert images.shape == (1024, 256, 256) and not images.any() and z["train_labels"].shape == (1024, 1)


def test_deep_sequence_nests(seeds: dict[str, fuzz.Seed]) -> None:
    ct = seeds["dicom/CT_small.dcm"]
    for defined in (False, True):
        data, params = fuzz.make_deep_sequence(ct, 40, defined, "ReferencedImageSequence", 123)
        ds = pydicom.dcmread(io.BytesIO(data))
        item, depth = ds, 0
        while "ReferencedImageSequence" in item:
            item, depth = item.ReferencedImageSequence[0], depth + 1
        assert depth == 40 and str(item.PatientName) == "DEEP^NESTED^000123"
        assert ds.PatientName == pydicom.dcmread(io.BytesIO(ct.data)).PatientName
        assert "depth=40" in params["variant"]


def test_sequences_nested_past_the_recursion_limit_are_a_typed_header_error(
    seeds: dict[str, fuzz.Seed],
) -> None:
    from medimg_spark.io.files import FileContext, process_file

    ct = seeds["dicom/CT_small.dcm"]
    deep, _ = fuzz.make_deep_sequence(ct, 1000, False, "ContentSequence", 7)
    rows = list(process_file("file:/in/deep.dcm", deep, FileContext(run_id="t")))
    assert [(r["_kind"], r["stage"], r["error_class"]) for r in rows] == [
        ("quarantine", "parse", "InvalidHeaderError")
    ]
    assert "nested deeper" in rows[0]["error_message"]  # was a bare RecursionError
    shallow, _ = fuzz.make_deep_sequence(ct, 40, False, "ContentSequence", 7)
    kinds = [r["_kind"] for r in process_file("file:/in/shallow.dcm", shallow, FileContext(run_id="t"))]
    assert kinds == ["instance", "image"]


def test_corpus_is_deterministic_and_prefix_stable(tmp_path: Path) -> None:
    ops = [op for op in fuzz.ALL_OPS if op != "compression_bomb"]
    small, _ = fuzz.build_corpus(tmp_path / "a", 90, 5, ops)
    large, _ = fuzz.build_corpus(tmp_path / "b", 120, 5, ops)
    assert [e["sha256"] for e in small] == [e["sha256"] for e in large[:90]]
    assert len({e["sha256"] for e in large if e["op"] != "empty"}) == len(
        [e for e in large if e["op"] != "empty"]
    )
    for e in large:
        assert hashlib.sha256((tmp_path / "b" / e["path"]).read_bytes()).hexdigest() == e["sha256"]
    names = {e["name_style"] for e in large}
    assert set(fuzz.ODD_NAMES) <= names
    assert not any(Path(e["path"]).name.startswith((".", "_")) for e in large)


def test_source_paths_and_random_tokens() -> None:
    assert "/tmp/a b#c.dcm" in fuzz._uri_candidates("file:/tmp/a%20b%23c.dcm")
    assert "/tmp/x/latin1-\udce9.dcm" in fuzz._uri_candidates("file:///tmp/x/latin1-%E9.dcm")
    blob = b'"2.25.148884662050724154713061157475586426402" zz' + b"0" * 64 + b" 20150529"
    assert fuzz.scrub(blob) == b'"#" zz# 20150529'


def _run_harness(work: Path) -> dict[str, Any]:
    report = work / "fuzz_report.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "fuzz.py"),
        *("--n", str(RUN_N), "--seed", str(RUN_SEED), "--work", str(work), "--report", str(report)),
        *("--bomb-scale", str(BOMB_SCALE), "--master", "local[2]", "--timeout", "900", "--triage", "auto"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, check=False)
    assert report.is_file(), f"no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(report.read_text())
    result["_stdout"] = proc.stdout
    result["_returncode"] = proc.returncode
    return result


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _run_harness(tmp_path_factory.mktemp("fuzz"))


# The seeded 520-file ingest run (~75 s on 2 cores) is run by `make integration` (and `make fuzz` runs
# 10,000 files); the operator tests above stay in `make test`.
@pytest.mark.integration
def test_seeded_run_covers_every_operator(fuzz_run: dict[str, Any]) -> None:
    corpus = fuzz_run["corpus"]
    assert corpus["files"] >= 500
    assert set(corpus["by_op"]) == set(fuzz.ALL_OPS)
    assert corpus["odd_names"] >= len(fuzz.ODD_NAMES)
    props = fuzz_run["properties"]
    for name in (
        "exit_code",
        "accounting",
        "summary_consistent",
        "no_silent_pixel_loss",
        "frames_consistent",
        "controls_consistent",
        "typed_reasons",
        "worker_rss",
        "no_phi",
    ):
        assert name in props, name
    assert props["no_phi"]["values_checked"] > 100


@pytest.mark.parametrize(
    "prop",
    [
        "exit_code",
        "accounting",
        "summary_consistent",
        "no_silent_pixel_loss",
        "frames_consistent",
        "controls_consistent",
        "typed_reasons",
        "worker_rss",
        "no_phi",
    ],
)
@pytest.mark.integration
def test_seeded_run_property(fuzz_run: dict[str, Any], prop: str) -> None:
    p = fuzz_run["properties"].get(prop, {"ok": False, "failures": [{"detail": "not checked"}]})
    shown = "\n".join(json.dumps(f, default=str)[:600] for f in p["failures"][:12])
    assert p["ok"], f"{prop}: {len(p['failures'])} failures, e.g.\n{shown}"


@pytest.mark.integration
def test_seeded_run_exit_status(fuzz_run: dict[str, Any]) -> None:
    assert fuzz_run["_returncode"] == (0 if fuzz_run["ok"] else 1), fuzz_run["_stdout"][-3000:]
    assert fuzz_run["ok"], "\n".join(
        json.dumps(g, default=str)[:400] for g in fuzz_run["failures_by_origin"][:20]
    )
