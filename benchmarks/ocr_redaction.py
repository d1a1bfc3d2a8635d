"""Burned-in text redaction by OCR on the real US / SC / CR files of the corpus.

    python benchmarks/ocr_redaction.py [--json OUT.json] [--png-dir DIR] [--limit N]

Finds the real ultrasound, secondary-capture and computed-radiography files among pydicom's test
files, the pydicom-data ``data_store`` and deid-data (by Modality and SOP Class UID, one per
distinct pixel content), de-identifies each with the privacy engine twice, without OCR
(``ocr="off"``: today's quarantine) and with it (``ocr="on"``), and prints one row per file:
outcome, frames, text boxes the redaction pass blanked, residual boxes (an independent
verification read of the written pixels at the verification settings: must be 0), seconds and
seconds per frame; then the totals. ``--png-dir`` writes the first redacted frame of every written
file for a look. Needs the ``tesseract`` binary (Debian package ``tesseract-ocr``).

    python benchmarks/ocr_redaction.py --ingest DIR [DIR ...] [--master local[2]]

runs the real ingest (:func:`medimg_spark.io.ingest.ingest` with the de-identification hook, as
``medimg ingest`` does) over the folders twice, ``ocr="off"`` and ``ocr="auto"``, and prints the
ultrasound frames in ``images`` and the quarantined US files and frames by reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medimg_spark.privacy import (  # noqa: E402
    DeidConfig,
    Deidentifier,
    pixels,
    tesseract_available,
)
from medimg_spark.privacy.engine import quiet_pydicom  # noqa: E402
from medimg_spark.privacy.errors import DeidFileError  # noqa: E402

KEY = bytes(range(1, 33))
SOP_US = ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3")
SOP_SC = "1.2.840.10008.5.1.4.1.1.7"
SOP_CR = "1.2.840.10008.5.1.4.1.1.1"


@dataclass
class Row:
    """The outcome of one file."""

    file: str
    corpus: str
    modality: str
    frames: int
    size: str
    without_ocr: str
    with_ocr: str
    text_boxes: int
    residual: int | None
    seconds: float
    seconds_per_frame: float


def corpus_roots() -> list[tuple[str, Path]]:
    """(name, folder) of the corpora present."""
    from pydicom.data import get_testdata_file

    roots: list[tuple[str, Path]] = []
    ct = get_testdata_file("CT_small.dcm")
    if ct:
        roots.append(("pydicom", Path(ct).parent))
    us = get_testdata_file("US1_UNCR.dcm")  # fetched into pydicom-data's data_store
    if us:
        roots.append(("pydicom-data", Path(us).parent))
    try:
        import deid_data

        roots.append(("deid-data", Path(deid_data.__file__).parent / "data"))
    except ImportError:
        pass
    return roots


def find_files() -> list[tuple[str, Path, pydicom.Dataset]]:
    """Real US / SC / CR files, one per distinct pixel data (the same image in several encodings counts once)."""
    found: list[tuple[str, Path, pydicom.Dataset]] = []
    seen: set[str] = set()
    for corpus, root in corpus_roots():
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.suffix in {".py", ".pyc", ".json", ".txt", ".md"}:
                continue
            try:
                with quiet_pydicom():
                    head = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:
                continue
            modality = str(head.get("Modality", "") or "")
            sop = str(head.get("SOPClassUID", "") or "")
            if not (modality in {"US", "SC", "CR"} or sop.startswith((*SOP_US, SOP_SC, SOP_CR))):
                continue
            if "PixelData" not in pydicom.dcmread(p, specific_tags=["PixelData"]):
                continue
            try:
                with quiet_pydicom():
                    ds = pydicom.dcmread(p)
                    arr = ds.pixel_array
            except Exception:
                continue
            if min(int(ds.Rows), int(ds.Columns)) < 64:
                continue  # 3x3 .. 45x10 test patterns: no room for text
            digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            found.append((corpus, p, ds))
    return found


def _outcome(deid: Deidentifier, ds: pydicom.Dataset) -> tuple[str, pydicom.Dataset | None, int]:
    try:
        result = deid.deidentify(ds)
    except DeidFileError as exc:
        return type(exc).__name__, None, 0
    except Exception as exc:  # the ingest hook quarantines these as DeidProcessingError
        return f"DeidProcessingError({type(exc).__name__})", None, 0
    return ("redacted" if result.pixels_cleaned else "written"), result.dataset, result.ocr_boxes


def residual_boxes(out: pydicom.Dataset) -> int:
    """Text boxes an independent verification read finds in the written pixels."""
    arr = np.asarray(out.pixel_array)
    n = int(out.get("NumberOfFrames", 1) or 1)
    frames = pixels._frames_view(arr, n, int(out.get("SamplesPerPixel", 1) or 1))
    palette = pixels._palette(out)
    return sum(
        len(
            pixels.ocr_words(
                p, variants=pixels.READ_VARIANTS, min_confidence=pixels.VERIFY_CONFIDENCE, chroma=c
            )
        )
        for p, c in pixels._probes(frames, palette)
    )


def run(limit: int | None, png_dir: Path | None) -> list[Row]:
    """Measure every file; returns the rows."""
    off = Deidentifier(DeidConfig(ocr="off"), KEY)
    on = Deidentifier(DeidConfig(ocr="on"), KEY)
    rows: list[Row] = []
    files = find_files()[:limit]
    for corpus, path, ds in files:
        n = int(ds.get("NumberOfFrames", 1) or 1)
        before, _, _ = _outcome(off, ds.copy())
        t0 = time.perf_counter()
        after, out, boxes = _outcome(on, ds.copy())
        seconds = time.perf_counter() - t0
        residual = residual_boxes(out) if out is not None else None
        if png_dir is not None and out is not None and after == "redacted":
            import cv2

            png_dir.mkdir(parents=True, exist_ok=True)
            frame = np.asarray(out.pixel_array)
            frame = frame[0] if n > 1 else frame
            pal = pixels._palette(out)
            if pal is not None:
                frame = pal[np.clip(frame.astype(np.int64), 0, len(pal) - 1)]
            if frame.ndim == 3:
                if frame.dtype != np.uint8:  # 16-bit palette or RGB: to 8 bits
                    frame = (frame.astype(np.float64) * 255.0 / max(float(frame.max()), 1.0)).astype(np.uint8)
                frame = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            cv2.imwrite(
                str(png_dir / f"{path.stem}.png"), pixels.ocr_probe(frame) if frame.ndim == 2 else frame
            )
        rows.append(
            Row(
                file=path.name,
                corpus=corpus,
                modality=str(ds.get("Modality", "") or "?"),
                frames=n,
                size=f"{ds.Columns}x{ds.Rows}",
                without_ocr=before,
                with_ocr=after,
                text_boxes=boxes,
                residual=residual,
                seconds=round(seconds, 2),
                seconds_per_frame=round(seconds / n, 3),
            )
        )
        print(_fmt(rows[-1]), flush=True)
    return rows


HEADER = f"{'file':<34} {'corpus':<12} {'mod':<4} {'frames':>6} {'size':>10} {'no OCR':<24} {'with OCR':<18} {'boxes':>5} {'resid':>5} {'s':>6} {'s/frame':>7}"


def _fmt(r: Row) -> str:
    resid = "-" if r.residual is None else str(r.residual)
    return (
        f"{r.file[:34]:<34} {r.corpus:<12} {r.modality:<4} {r.frames:>6} {r.size:>10} {r.without_ocr:<24} "
        f"{r.with_ocr:<18} {r.text_boxes:>5} {resid:>5} {r.seconds:>6.2f} {r.seconds_per_frame:>7.3f}"
    )


def summary(rows: list[Row]) -> dict[str, object]:
    """Totals: frames recovered / still quarantined (by reason), boxes, residual, seconds per frame."""
    quarantined_before = sum(r.frames for r in rows if r.without_ocr not in {"written", "redacted"})
    recovered = sum(
        r.frames
        for r in rows
        if r.without_ocr not in {"written", "redacted"} and r.with_ocr in {"written", "redacted"}
    )
    still: dict[str, int] = {}
    for r in rows:
        if r.with_ocr not in {"written", "redacted"}:
            still[r.with_ocr] = still.get(r.with_ocr, 0) + r.frames
    frames = sum(r.frames for r in rows)
    return {
        "files": len(rows),
        "frames": frames,
        "frames_quarantined_without_ocr": quarantined_before,
        "frames_recovered_by_ocr": recovered,
        "frames_still_quarantined": still,
        "text_boxes": sum(r.text_boxes for r in rows),
        "residual_boxes_in_written_files": sum(r.residual or 0 for r in rows),
        "ocr_seconds": round(sum(r.seconds for r in rows), 1),
        "seconds_per_frame": round(sum(r.seconds for r in rows) / max(frames, 1), 3),
        "seconds_per_file": round(sum(r.seconds for r in rows) / max(len(rows), 1), 2),
    }


def ingest_counts(
    inputs: list[str], master: str, modes: tuple[str, ...] = ("off", "auto")
) -> dict[str, dict[str, object]]:
    """US frames reaching ``images`` and US frames quarantined (by reason), without and with OCR."""
    import tempfile

    import pyarrow.parquet as pq

    from medimg_spark.io.files import local_path
    from medimg_spark.io.ingest import ingest
    from medimg_spark.privacy.hook import IngestDeidentifier
    from medimg_spark.session import build_session

    spark = build_session("ocr-redaction-benchmark", master=master)
    counts: dict[str, dict[str, object]] = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="medimg-ocr-bench-") as tmp:
            hook = IngestDeidentifier(Deidentifier(DeidConfig(ocr=mode), KEY))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            ingest(spark, inputs, tmp, deidentify=hook)
            seconds = time.perf_counter() - t0
            images = pq.read_table(f"{tmp}/images", columns=["modality", "source_path"]).to_pylist()
            quarantine = pq.read_table(f"{tmp}/quarantine").to_pylist()
        us_frames = sum(1 for r in images if r["modality"] == "US")
        by_input = {
            root: sum(
                1 for r in images if r["modality"] == "US" and str(Path(root).resolve()) in r["source_path"]
            )
            for root in inputs
        }
        quarantined: dict[str, int] = {}
        files: dict[str, int] = {}
        quarantined_by_input: dict[str, int] = dict.fromkeys(inputs, 0)
        for r in quarantine:
            try:
                with quiet_pydicom():
                    head = pydicom.dcmread(local_path(r["source_path"]), stop_before_pixels=True)
            except Exception:
                continue
            if str(head.get("Modality", "")) != "US":
                continue
            n = int(head.get("NumberOfFrames", 1) or 1)
            quarantined[r["error_class"]] = quarantined.get(r["error_class"], 0) + n
            files[r["error_class"]] = files.get(r["error_class"], 0) + 1
            for root in inputs:
                if str(Path(root).resolve()) in r["source_path"]:
                    quarantined_by_input[root] += n
        counts[mode] = {
            "us_frames_in_images": us_frames,
            "us_frames_in_images_by_input": by_input,
            "us_frames_quarantined_by_input": quarantined_by_input,
            "us_frames_quarantined": quarantined,
            "us_files_quarantined": files,
            "ingest_seconds": round(seconds, 1),
        }
        print(f"ocr={mode}: {counts[mode]}", flush=True)
    spark.stop()
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write rows and totals here")
    parser.add_argument("--png-dir", type=Path, help="write the first redacted frame of each file here")
    parser.add_argument("--limit", type=int, help="only the first N files")
    parser.add_argument(
        "--ingest", nargs="+", metavar="DIR", help="count US frames with the real ingest instead"
    )
    parser.add_argument("--master", default="local[2]", help="Spark master of --ingest")
    parser.add_argument("--modes", nargs="+", default=["off", "auto"], help="ocr settings of --ingest")
    args = parser.parse_args(argv)
    if not tesseract_available():
        print("tesseract is not installed (Debian package tesseract-ocr)", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    if args.ingest:
        counts = ingest_counts(args.ingest, args.master, tuple(args.modes))
        if args.json:
            args.json.write_text(json.dumps(counts, indent=2))
        return 0
    print(HEADER)
    rows = run(args.limit, args.png_dir)
    totals = summary(rows)
    print()
    for key, value in totals.items():
        print(f"{key:<34} {value}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "totals": totals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
