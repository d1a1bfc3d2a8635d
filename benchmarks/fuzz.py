"""Fuzz harness for ``medimg ingest``: seeded mutations of real files, run through the real CLI.

    python benchmarks/fuzz.py --n 10000 --seed 1                 # corpus, ingest, checks, report
    python benchmarks/fuzz.py --n 500 --work /tmp/fz --master 'local[2]'
    python benchmarks/fuzz.py --n 500 --ops flip_pixels,truncate  # only some operators
    python benchmarks/fuzz.py --n 500 --skip 'Rows+Columns'       # leave out variants matching a substring
    python benchmarks/fuzz.py --n 500 --triage only               # per-file check without Spark (fast)

Corpus (deterministic for ``--seed``; file ``i`` depends only on the seed and ``i``, so a smaller ``--n`` is a
prefix of a larger one). Seed files are real: 25 DICOM files of pydicom's test data (uncompressed, RLE,
JPEG baseline/lossless/extended, JPEG-LS, JPEG 2000, multi-frame, big endian, implicit VR, no preamble or
file meta, deflated, sequences, private tags, patient names), PNG (8-bit, 16-bit, RGB), JPEG and TIFF
(single page, multi-page 16-bit, deflate) made from PneumoniaMNIST pixels, NIfTI-1/2 (nibabel's test
files and files written with nibabel), gzip-wrapped files and MedMNIST ``.npz`` files. The corpus first
holds fixed cases (every seed unmodified, every odd file name, the empty file, the 132-byte preamble-only
DICOM, deep sequences, compression bombs), then random mutations. Operators:

* ``seed``: the seed file unchanged (a control); ``benign``: a harmless change that makes the content unique
  (DICOM preamble byte, PNG ``tEXt`` chunk, JPEG comment, trailing TIFF byte, NIfTI ``descrip``, zip comment,
  gzip ``mtime``); ``odd_name``: a benign copy under an odd name (spaces, ``#``, ``%``, ``%20``, ``?``,
  ``[]``, ``{}``, ``:``, unicode, a non-UTF-8 byte name, leading dashes, sub-folders...); random mutations
  also get an odd name one time in ten when ``odd_name`` is selected;
* ``flip_header`` / ``flip_pixels``: byte flips before / inside the pixel data (DICOM PixelData value, PNG
  IDAT, JPEG scan, TIFF strips, NIfTI voxels, npy data); ``truncate``: cut at a random offset;
* ``huge_length``: absurd length fields (DICOM element length 0xFFFFFFF0, undefined, odd, zero, or one that
  swallows the rest of the file; the (0002,0000)/(0002,0002) file-meta tricks; PNG/JPEG segment lengths,
  TIFF strip sizes, IFD loops, NIfTI ``vox_offset``, zip member sizes);
* ``absurd_dims``: Rows/Columns 65535, NumberOfFrames huge/negative/non-numeric, odd BitsAllocated...;
  NIfTI ``dim[]`` 32767 or negative; PNG IHDR and JPEG SOF sizes (valid CRC); TIFF ImageWidth; npy shapes;
* ``deep_sequence``: a DICOM with a 16..2000-level nested sequence, patient names in the innermost item;
* ``compression_bomb``: a gzip of 1.5 GiB of zeros (1.5 MB), a DICOM padded with 512 MiB of zeros in gzip,
  a gzip inside a gzip, and an ``.npz`` whose deflated member declares a (16384, 256, 256) uint8 array;
* ``preamble_only``: the 128-byte preamble and ``DICM`` alone; ``empty``: a zero-byte file.

Every file is written to ``WORK/corpus`` and described in ``WORK/manifest.json`` (operator, seed file,
variant, sha256). Mutations are redrawn until their content is unique (ingest deduplicates by sha256).

The real CLI then runs as a subprocess, ``medimg ingest WORK/corpus --out WORK/out --key-file
WORK/keys/deid.key --vault WORK/vault --vault-key-file WORK/keys/vault.key --json`` (fresh keys each run),
while its process tree is sampled every 0.2 s (RSS and ``VmHWM`` of the driver, the JVM and every Python
worker; a worker above ``--kill-rss-gb`` or a run over ``--timeout`` is killed). Properties checked (the
script exits 1 when any fails):

* ``exit_code``: the CLI exits 0;
* ``accounting``: every corpus file is accounted for exactly once: an ``instances`` row or a file-level
  quarantine row (stage read/parse/deid, no frame index), plus at most one decode-stage row after an
  ``instances`` row; files with the same content may be represented by one of them; no row names a path
  outside the corpus (``source_path`` is a keyed pseudonym, ``deid-<HMAC>.ext``: its original comes from the
  run's re-identification vault, so a pseudonym missing from the vault counts as outside; the original URIs
  are compared after one percent-decoding, raw, and with ``\\xNN`` escapes of non-UTF-8 bytes decoded);
* ``summary_consistent``: ``files_seen``, ``files_ingested``, ``frames_written``, ``quarantined`` and
  ``duplicates_skipped`` of the run summary match the corpus and the tables;
* ``no_silent_pixel_loss``: a file whose seed has pixel data ends with image rows or a quarantine row
  (not an ``instances`` row alone), unless the mutation legitimately removed the pixels;
* ``frames_consistent``: ``n_frames`` is not negative and equals the number of image rows, unless a
  decode-stage quarantine row says why not;
* ``controls_consistent``: benign and odd-named copies of a seed end like the unmodified seed (same tables,
  same quarantine stage/error class; a non-UTF-8 name may be quarantined unread), and an unmodified gzip
  wrapper ends like the file it wraps;
* ``typed_reasons``: every quarantine row's ``error_class`` is one of ingest's own (``IngestFileError`` and
  its subclasses), not a library's exception class;
* ``worker_rss``: the peak RSS of every Python worker is at most ``--max-worker-rss-gb``;
* ``no_phi``: no PHI value of the seed DICOM files (``tests/phi.py`` rules; values without a letter or
  digit, such as ``^^^^``, left out) occurs in any output: every decoded string/binary Parquet value except
  ``pixels``, every other output file's raw bytes, the output's file names, and the CLI's stdout/stderr.
  Tokens the tool makes at random (``2.25.`` UIDs, hex digests, UUIDs) are blanked first: their digit runs
  would match short numeric values (times, IDs) by chance.

``--triage`` (``auto``: when the CLI fails or is killed; ``always``; ``only``: without the Spark run) runs
the per-file core of ingest (:func:`medimg_spark.io.files.process_file` with ingest's default limits, then
the Arrow conversion of its rows) on each file in watched subprocesses with the Python workers' address-space
limit (``spark.executor.pyspark.memory``), to name the files that raise, crash, hang or grow past the RSS
limit. Everything is printed and written to ``--report`` (default ``WORK/fuzz_report.json``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.run import _proc_status_kb  # noqa: E402  (the end-to-end benchmark's /proc reader)

SAMPLE_NPZ = REPO / "data" / "sample" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"
GIB = 1 << 30
MIB = 1 << 20
FILE_STAGES = ("read", "parse", "deid", "decode")

#: pydicom test files used as seeds (``pydicom.data.get_testdata_file``); missing ones are skipped.
DICOM_SEEDS = (
    "CT_small.dcm",  # explicit VR little endian, 16-bit CT, patient data, GE private tags
    "MR_small.dcm",
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "SC_rgb_rle_2frame.dcm",  # RLE, RGB, 2 frames
    "rtdose_rle.dcm",  # RLE, 15 frames
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
    "JPEG-lossy.dcm",  # JPEG extended 12-bit (no decoder: a decode-stage quarantine)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
    "rtdose.dcm",  # multi-frame, implicit VR
    "emri_small.dcm",  # multi-frame MR (pydicom-data)
    "ExplVR_BigEndNoMeta.dcm",  # no preamble, no file meta, big endian
    "ExplVR_LitEndNoMeta.dcm",  # no preamble, no file meta
    "no_meta.dcm",  # no file meta
    "image_dfl.dcm",  # deflated explicit VR little endian
    "nested_priv_SQ.dcm",  # nested private sequences
    "priv_SQ.dcm",
    "rtplan.dcm",  # sequences, no pixels, patient names
    "test-SR.dcm",  # structured report, nested content, names
    "SC_rgb_small_odd_big_endian.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
)
NIBABEL_SEEDS = ("anatomical.nii", "functional.nii", "example4d.nii.gz", "example_nifti2.nii.gz")

#: A name holding the byte 0xE9 alone, not UTF-8 (a lone surrogate; ``os.fsencode`` writes the raw byte).
NON_UTF8_NAME = "latin1-\udce9-{i}{ext}"
#: Odd file names: ``{i}`` is the file index and ``{ext}`` the seed's extension.
ODD_NAMES: tuple[str, ...] = (
    "space {i}{ext}",
    "hash#{i}{ext}",
    "pct%{i}{ext}",
    "pct20%20lit-{i}{ext}",
    "pctbad%zz-{i}{ext}",
    "query?{i}{ext}",
    "bracket[{i}]{ext}",
    "brace{{{i}}}{ext}",
    "a:b-{i}{ext}",
    "ünïcødé-患者-{i}{ext}",
    "emoji-🩻-{i}{ext}",
    "nfd-e\u0301-{i}{ext}",
    NON_UTF8_NAME,
    "-{i}{ext}",
    "--out-{i}{ext}",
    "star*{i}{ext}",
    "quote'\"{i}{ext}",
    "semi;amp&plus+eq={i}{ext}",
    "tilde~{i}{ext}",
    "back\\slash{i}{ext}",
    "trailing-space-{i}{ext} ",
    "noext-{i}",
    "UPPER-{i}.DCM",
    "long-" + "x" * 200 + "-{i}{ext}",
    "dot.in.name..{i}{ext}",
    "twin a b.dcm",  # fixed-case only (no {i}): two files whose names differ only by a space vs %20
    "twin a%20b.dcm",
    "sub dir/space {i}{ext}",
    "sub#dir[1]/{i}{ext}",
    "deep/a/b/c/d/e/{i}{ext}",
)
ODD_NAME_RATE = 0.1  # share of random mutations that also get an odd name

ALL_OPS = (
    "seed",
    "benign",
    "odd_name",
    "flip_header",
    "flip_pixels",
    "truncate",
    "huge_length",
    "absurd_dims",
    "deep_sequence",
    "compression_bomb",
    "preamble_only",
    "empty",
)
#: Relative weights of the operators drawn at random (the others only appear as fixed cases).
RANDOM_WEIGHTS = {
    "benign": 4,
    "flip_header": 20,
    "flip_pixels": 20,
    "truncate": 15,
    "huge_length": 15,
    "absurd_dims": 22,
    "deep_sequence": 1,
}


# ============================================================================ seeds


@dataclasses.dataclass
class Elem:
    """One top-level DICOM data element located in the raw bytes."""

    tag: int
    vr: bytes | None  # None: implicit VR
    offset: int  # first byte of the element header
    len_offset: int
    len_size: int  # 2 or 4
    value_offset: int
    length: int
    little: bool
    implicit: bool
    meta: bool


@dataclasses.dataclass
class Seed:
    """A real file the mutations start from.

    Attributes:
        name: ``<format>/<file name>``, recorded in the manifest.
        fmt: dicom, png, jpeg, tiff, nifti1, nifti2, npz or gzip.
        ext: file extension used for plain names.
        data: the file's bytes.
        has_pixels: whether ingest should find image data in it.
        pixel_start: first byte of the pixel region (None when unknown or absent).
        pixel_end: end of the pixel region.
        header_start: first byte worth flipping in the header (after a DICOM preamble).
        info: format details the operators use (DICOM elements, TIFF tags...).
        inner: for gzip: the decompressed seed.
    """

    name: str
    fmt: str
    ext: str
    data: bytes
    has_pixels: bool
    pixel_start: int | None = None
    pixel_end: int | None = None
    header_start: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    inner: Seed | None = None

    @property
    def stem(self) -> str:
        base = self.name.split("/", 1)[-1]
        for suffix in (".nii.gz", ".dcm", ".nii", ".png", ".jpg", ".tif", ".npz", ".gz"):
            base = base.removesuffix(suffix)
        return "".join(c if c.isalnum() or c in "-" else "-" for c in base)


LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI "
    b"UL UN UR US UT UV".split()
)
TS_IMPLICIT = "1.2.840.10008.1.2"
TS_BIG = "1.2.840.10008.1.2.2"
TS_DEFLATED = "1.2.840.10008.1.2.1.99"
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def _read_header(
    data: bytes, pos: int, little: bool, implicit: bool
) -> tuple[int, bytes | None, int, int, int]:
    """``(tag, vr, len_offset, len_size, value_offset)`` of the element header at ``pos``."""
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", data[pos : pos + 4])
    tag = (group << 16) | elem
    if implicit or group == 0xFFFE:
        return tag, None, pos + 4, 4, pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        return tag, vr, pos + 8, 4, pos + 12
    return tag, vr, pos + 6, 2, pos + 8


def _length(data: bytes, off: int, size: int, little: bool) -> int:
    e = "<" if little else ">"
    return struct.unpack(e + ("I" if size == 4 else "H"), data[off : off + size])[0]


def _skip_undefined(data: bytes, pos: int, little: bool, implicit: bool, depth: int = 0) -> int | None:
    """End offset of an undefined-length value (sequence or encapsulated pixels) starting at ``pos``."""
    if depth > 64:
        return None
    while pos + 8 <= len(data):
        tag, _, _, _, _ = _read_header(data, pos, little, True)
        length = _length(data, pos + 4, 4, little)
        if tag == SEQ_END:
            return pos + 8
        if tag != ITEM:
            return None
        if length != 0xFFFFFFFF:
            pos += 8 + length
            continue
        pos += 8
        while True:  # an undefined-length item: elements up to the item delimiter
            if pos + 8 > len(data):
                return None
            tag, _, lo, ls, vo = _read_header(data, pos, little, implicit)
            if tag == ITEM_END:
                pos += 8
                break
            length = _length(data, lo, ls, little)
            if length == 0xFFFFFFFF:
                end = _skip_undefined(data, vo, little, implicit, depth + 1)
                if end is None:
                    return None
                pos = end
            else:
                pos = vo + length
    return None


def dicom_elements(data: bytes) -> tuple[list[Elem], dict[str, Any]]:
    """Locate the top-level elements of DICOM bytes (file meta and dataset, not inside deflate).

    Returns:
        ``(elements, info)``; ``info`` has ``little``, ``implicit``, ``deflated`` and ``preamble``.
    """
    out: list[Elem] = []
    preamble = len(data) >= 132 and data[128:132] == b"DICM"
    pos = 132 if preamble else 0
    ts = None
    has_meta = len(data) >= pos + 6 and data[pos : pos + 2] == b"\x02\x00" and data[pos + 4 : pos + 6] in VRS
    if has_meta:
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            tag, vr, lo, ls, vo = _read_header(data, pos, True, False)
            length = _length(data, lo, ls, True)
            out.append(Elem(tag, vr, pos, lo, ls, vo, length, True, False, True))
            if tag == 0x00020010:
                ts = data[vo : vo + length].rstrip(b"\x00 ").decode("ascii", "replace")
            pos = vo + length
    if ts is not None:
        little, implicit = ts != TS_BIG, ts == TS_IMPLICIT
    else:  # no file meta: like ingest, allow a few leading bytes before the first element
        pos = next((off for off in range(pos, pos + 16) if data[off + 4 : off + 6] in VRS), pos)
        little = len(data) >= pos + 2 and data[pos] != 0
        implicit = data[pos + 4 : pos + 6] not in VRS
    info = {"little": little, "implicit": implicit, "deflated": ts == TS_DEFLATED, "preamble": preamble}
    if ts == TS_DEFLATED:
        return out, info
    while pos + 8 <= len(data):
        tag, vr, lo, ls, vo = _read_header(data, pos, little, implicit)
        if vr is not None and vr not in VRS:
            break
        length = _length(data, lo, ls, little)
        out.append(Elem(tag, vr, pos, lo, ls, vo, length, little, implicit, False))
        if length == 0xFFFFFFFF:
            end = _skip_undefined(data, vo, little, implicit)
            if end is None:
                break
            pos = end
        else:
            pos = vo + length
    return out, info


def _find(elems: list[Elem], tag: int) -> Elem | None:
    return next((e for e in elems if e.tag == tag and not e.meta), None)


def dicom_seed(name: str, data: bytes) -> Seed:
    """A DICOM seed with its element index and pixel region."""
    elems, info = dicom_elements(data)
    info["elements"] = elems
    pixel = next((e for e in elems if e.tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)), None)
    start = end = None
    if pixel is not None:
        start = pixel.value_offset
        end = len(data) if pixel.length == 0xFFFFFFFF else min(len(data), start + pixel.length)
        info["pixel_elem_offset"] = pixel.offset
    return Seed(
        name=f"dicom/{name}",
        fmt="dicom",
        ext=".dcm",
        data=data,
        has_pixels=pixel is not None or info["deflated"],
        pixel_start=start,
        pixel_end=end,
        header_start=128 if info["preamble"] else 0,
        info=info,
    )


def png_chunks(data: bytes) -> list[tuple[int, bytes, int, int]]:
    """``(offset, type, data offset, length)`` of every PNG chunk."""
    out = []
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        out.append((pos, kind, pos + 8, length))
        pos += 12 + length
        if kind == b"IEND":
            break
    return out


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, int, int]], int | None]:
    """``([(marker, offset, length)], scan data offset)`` of a JPEG stream up to its first scan."""
    out = []
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((marker, pos, length))
        if marker == 0xDA:
            return out, pos + 2 + length
        pos += 2 + length
    return out, None


def _raster_seed(name: str, fmt: str, ext: str, data: bytes) -> Seed:
    seed = Seed(name=f"{fmt}/{name}", fmt=fmt, ext=ext, data=data, has_pixels=True)
    if fmt == "png":
        chunks = png_chunks(data)
        idat = [c for c in chunks if c[1] == b"IDAT"]
        seed.info["chunks"] = chunks
        seed.pixel_start, seed.pixel_end = idat[0][2], idat[-1][2] + idat[-1][3]
    elif fmt == "jpeg":
        segments, scan = jpeg_segments(data)
        seed.info["segments"] = segments
        seed.pixel_start, seed.pixel_end = scan, len(data) - 2
    else:
        import tifffile

        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
            first = pages[0]
            seed.info["byteorder"] = tif.byteorder
            seed.info["tags"] = {
                t.name: (t.valueoffset, t.dtype, t.count, t.offset) for t in first.tags.values()
            }
            seed.info["ifds"] = [p.offset for p in pages]
            offsets = [o for p in pages for o in p.dataoffsets]
        seed.pixel_start, seed.pixel_end = min(offsets), len(data)
    return seed


def _nifti_seed(name: str, data: bytes) -> Seed:
    little = struct.unpack("<i", data[:4])[0] in (348, 540)
    e = "<" if little else ">"
    version = 1 if struct.unpack(e + "i", data[:4])[0] == 348 else 2
    if version == 1:
        vox = int(struct.unpack(e + "f", data[108:112])[0])
    else:
        vox = struct.unpack(e + "q", data[168:176])[0]
    fmt = f"nifti{version}"
    return Seed(
        name=f"{fmt}/{name}",
        fmt=fmt,
        ext=".nii",
        data=data,
        has_pixels=True,
        pixel_start=vox,
        pixel_end=len(data),
        info={"little": little, "version": version},
    )


def _npz_seed(name: str, data: bytes) -> Seed:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        members = {i.filename: zf.read(i) for i in infos}
        stored = all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    first = infos[0]
    start = first.header_offset + 30 + len(first.filename.encode())
    if stored:
        start = data.index(b"\x93NUMPY", start)
        (hlen,) = struct.unpack("<H", data[start + 8 : start + 10])
        start += 10 + hlen
    return Seed(
        name=f"npz/{name}",
        fmt="npz",
        ext=".npz",
        data=data,
        has_pixels=True,
        pixel_start=start,
        pixel_end=first.header_offset + 30 + len(first.filename.encode()) + first.compress_size,
        info={"members": members, "stored": stored},
    )


def _gzip_seed(inner: Seed, name: str | None = None, data: bytes | None = None) -> Seed:
    data = data if data is not None else gzip.compress(inner.data, compresslevel=6, mtime=0)
    return Seed(
        name=f"gzip/{name or inner.name.split('/', 1)[1] + '.gz'}",
        fmt="gzip",
        ext=(inner.ext + ".gz") if inner.ext != ".nii" else ".nii.gz",
        data=data,
        has_pixels=inner.has_pixels,
        pixel_start=10,
        pixel_end=len(data) - 8,
        header_start=0,
        inner=inner,
    )


def _pneumonia(n: int) -> Any:
    import numpy as np

    with np.load(SAMPLE_NPZ) as z:
        return z["train_images"][:n].copy(), z["train_labels"][:n].copy(), z["val_images"][:n].copy()


def build_seeds() -> list[Seed]:
    """Every seed file: real DICOM/NIfTI test files, rasters and npz from real pixels, gzip wrappers."""
    import cv2
    import nibabel as nib
    import numpy as np
    import tifffile
    from pydicom.data import get_testdata_file

    seeds: list[Seed] = []
    for name in DICOM_SEEDS:
        path = get_testdata_file(name)
        if path is not None:
            seeds.append(dicom_seed(name, Path(str(path)).read_bytes()))

    images, labels, val = _pneumonia(8)
    big = cv2.resize(images[0], (96, 96), interpolation=cv2.INTER_LINEAR)
    rgb = np.dstack([images[1], images[2], images[3]])

    def png(arr: Any) -> bytes:
        return cv2.imencode(".png", arr)[1].tobytes()

    seeds.append(_raster_seed("chest8.png", "png", ".png", png(big)))
    seeds.append(_raster_seed("chest16.png", "png", ".png", png(images[4].astype(np.uint16) * 257 + 3)))
    seeds.append(_raster_seed("chest_rgb.png", "png", ".png", png(rgb)))
    seeds.append(_raster_seed("chest.jpg", "jpeg", ".jpg", cv2.imencode(".jpg", big)[1].tobytes()))
    seeds.append(_raster_seed("chest_rgb.jpg", "jpeg", ".jpg", cv2.imencode(".jpg", rgb)[1].tobytes()))
    tiffs: tuple[tuple[str, list[Any], str | None], ...] = (
        ("chest8.tif", [big], None),
        ("chest16_4pages.tif", [im.astype(np.uint16) * 200 for im in images[:4]], None),
        ("chest_deflate.tif", [images[5]], "zlib"),
    )
    for name, pages, compression in tiffs:
        buf = io.BytesIO()
        with tifffile.TiffWriter(buf) as tw:
            for page in pages:
                tw.write(page, photometric="minisblack", compression=compression)
        seeds.append(_raster_seed(name, "tiff", ".tif", buf.getvalue()))

    nib_dir = Path(str(nib.__file__)).parent / "tests" / "data"
    for name in NIBABEL_SEEDS:
        nii_path = nib_dir / name
        if not nii_path.is_file():
            continue
        data = nii_path.read_bytes()
        if name.endswith(".gz"):
            inner = _nifti_seed(name.removesuffix(".gz"), gzip.decompress(data))
            seeds.append(_gzip_seed(inner, name, data))
        else:
            seeds.append(_nifti_seed(name, data))
    volume = np.stack([images[i] for i in range(6)], axis=-1).astype(np.int16) * 10 - 300
    n1 = nib.Nifti1Image(volume, np.diag([0.7, 0.7, 2.5, 1.0]))
    n1.header.set_slope_inter(1.0, -1024.0)
    seeds.append(_nifti_seed("chest_ct_like.nii", n1.to_bytes()))
    vol4 = np.stack([volume.astype(np.float32), volume.astype(np.float32) / 2], axis=-1)
    seeds.append(_nifti_seed("chest_4d.nii2", nib.Nifti2Image(vol4, np.eye(4)).to_bytes()))

    for compress, name in (
        (np.savez, "pneumoniamnist_slice.npz"),
        (np.savez_compressed, "slice_deflate.npz"),
    ):
        buf = io.BytesIO()
        compress(
            buf, train_images=images[:5], train_labels=labels[:5], val_images=val[:3], val_labels=labels[:3]
        )
        seeds.append(_npz_seed(name, buf.getvalue()))

    by_name = {s.name: s for s in seeds}
    for name in (
        "dicom/CT_small.dcm",
        "dicom/MR_small_RLE.dcm",
        "png/chest8.png",
        "nifti1/chest_ct_like.nii",
    ):
        if name in by_name:
            seeds.append(_gzip_seed(by_name[name]))
    return seeds


# ============================================================================ byte-level helpers


def _flip(data: bytes, start: int, end: int, rng: random.Random) -> tuple[bytes, dict[str, Any]]:
    """Change 1-8 bytes in ``data[start:end]`` (xor, zero, 0xFF or one bit)."""
    buf = bytearray(data)
    k = rng.choice((1, 1, 1, 2, 3, 4, 8))
    done = []
    for _ in range(k):
        pos = rng.randrange(start, end)
        mode = rng.choice(("xor", "zero", "ff", "bit"))
        old = buf[pos]
        if mode == "xor":
            buf[pos] ^= rng.randrange(1, 256)
        elif mode == "zero":
            buf[pos] = 0
        elif mode == "ff":
            buf[pos] = 0xFF
        else:
            buf[pos] ^= 1 << rng.randrange(8)
        if buf[pos] == old:  # zero on 0x00, 0xFF on 0xFF: change it anyway
            buf[pos] ^= 0xFF
        done.append(f"{mode}@{pos}")
    return bytes(buf), {"flips": done}


def _put(data: bytes, offset: int, fmt: str, value: Any) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def _pad(value: bytes, vr: bytes | None) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", None) else b" "
    return value


def encode_element(tag: int, vr: bytes, value: bytes, little: bool, implicit: bool) -> bytes:
    """A DICOM element's bytes (value padded to even length)."""
    e = "<" if little else ">"
    value = _pad(value, vr)
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(e + "I", len(value)) + value
    if vr in LONG_VRS:
        return head + vr + b"\x00\x00" + struct.pack(e + "I", len(value)) + value
    return head + vr + struct.pack(e + "H", len(value)) + value


def set_dicom_value(data: bytes, elems: list[Elem], tag: int, vr: bytes, value: bytes) -> bytes:
    """Replace (or insert, in tag order) the top-level element ``tag`` with ``value``."""
    info_elem = _find(elems, tag)
    dataset = [e for e in elems if not e.meta]
    little = dataset[0].little if dataset else True
    implicit = dataset[0].implicit if dataset else False
    if info_elem is not None:
        value = _pad(value, info_elem.vr or vr)
        e = "<" if info_elem.little else ">"
        length = struct.pack(e + ("I" if info_elem.len_size == 4 else "H"), len(value))
        end = info_elem.value_offset + info_elem.length
        return (
            data[: info_elem.len_offset]
            + length
            + data[info_elem.len_offset + info_elem.len_size : info_elem.value_offset]
            + value
            + data[end:]
        )
    after = next((e for e in dataset if e.tag > tag), None)
    at = after.offset if after is not None else len(data)
    return data[:at] + encode_element(tag, vr, value, little, implicit) + data[at:]


# ============================================================================ operators

Mutation = tuple[bytes, dict[str, Any]]


def _via_inner(
    seed: Seed, rng: random.Random, fn: Callable[[Seed, random.Random], Mutation | None]
) -> Mutation | None:
    """Mutate a gzip seed's decompressed content and compress it again."""
    assert seed.inner is not None
    got = fn(seed.inner, rng)
    if got is None or got[0] == seed.inner.data:
        return None
    data, params = got
    return gzip.compress(data, compresslevel=6, mtime=0), {**params, "inner": True}


def op_benign(seed: Seed, rng: random.Random) -> Mutation | None:
    """A harmless change that makes the file's content unique."""
    nonce = rng.getrandbits(48)
    tag = f"fuzz{nonce:012x}".encode()
    d = seed.data
    if seed.fmt == "dicom":
        if not seed.info["preamble"]:
            return None
        return d[:8] + tag[:16].ljust(16, b"\x00") + d[24:], {"variant": "preamble"}
    if seed.fmt == "png":
        chunk = b"tEXt" + b"fuzz\x00" + tag
        at = 8 + 12 + 13  # after IHDR
        body = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
        return d[:at] + body + d[at:], {"variant": "tEXt chunk"}
    if seed.fmt == "jpeg":
        return d[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + d[2:], {"variant": "COM segment"}
    if seed.fmt == "tiff":
        return d + tag, {"variant": "trailing bytes"}
    if seed.fmt in ("nifti1", "nifti2"):
        off = 148 if seed.fmt == "nifti1" else 240  # descrip
        return d[:off] + tag.ljust(80, b"\x00") + d[off + 80 :], {"variant": "descrip"}
    if seed.fmt == "npz":
        return _rezip(seed.info["members"], seed.info["stored"], comment=tag), {"variant": "zip comment"}
    if seed.fmt == "gzip":
        return d[:4] + struct.pack("<I", nonce & 0xFFFFFFFF) + d[8:], {"variant": "mtime"}
    return None


def op_flip_header(seed: Seed, rng: random.Random) -> Mutation | None:
    """Byte flips before the pixel data."""
    if seed.inner is not None and rng.random() < 0.6:
        return _via_inner(seed, rng, op_flip_header)
    end = seed.info.get("pixel_elem_offset", seed.pixel_start) or min(len(seed.data), 1024)
    start = seed.header_start
    if end <= start:
        return None
    data, params = _flip(seed.data, start, end, rng)
    return data, {"variant": "header", **params}


def op_flip_pixels(seed: Seed, rng: random.Random) -> Mutation | None:
    """Byte flips inside the pixel data."""
    if seed.inner is not None and rng.random() < 0.6:
        return _via_inner(seed, rng, op_flip_pixels)
    if seed.pixel_start is None or seed.pixel_end is None or seed.pixel_end <= seed.pixel_start:
        return None
    data, params = _flip(seed.data, seed.pixel_start, seed.pixel_end, rng)
    return data, {"variant": "pixels", **params}


def op_truncate(seed: Seed, rng: random.Random) -> Mutation | None:
    """Cut the file at a random offset (anywhere, in the header, or near the end)."""
    if seed.inner is not None and rng.random() < 0.5:
        return _via_inner(seed, rng, op_truncate)
    n = len(seed.data)
    if n < 2:
        return None
    where = rng.choice(("anywhere", "anywhere", "header", "tail"))
    head_end = max(2, seed.pixel_start or min(n, 512))
    if where == "header":
        cut = rng.randrange(1, min(head_end, n))
    elif where == "tail":
        cut = rng.randrange(max(1, n - max(2, n // 10)), n)
    else:
        cut = rng.randrange(1, n)
    params: dict[str, Any] = {"variant": f"cut {where}", "cut": cut, "of": n}
    if seed.fmt == "dicom":
        # a cut exactly between two top-level elements before the pixels leaves a valid file without pixels
        boundaries = {e.offset for e in seed.info["elements"]}
        pixel_at = seed.info.get("pixel_elem_offset")
        if cut in boundaries and (pixel_at is None or cut <= pixel_at):
            params["expect_pixels"] = False
    return seed.data[:cut], params


def _huge_length_dicom(seed: Seed, rng: random.Random) -> Mutation | None:
    elems: list[Elem] = seed.info["elements"]
    if not elems:
        return None
    data = seed.data
    kind = rng.choice(("element", "element", "element", "pixel", "meta_group_length", "meta_0002_0002"))
    if kind == "meta_group_length":
        group = next((e for e in elems if e.tag == 0x00020000), None)
        if group is None:
            kind = "element"
        else:
            value = rng.choice((0, 2, 0xFFFFFFF0, len(data), group.length + 1))
            return _put(data, group.value_offset, "<I", value), {"variant": f"(0002,0000)={value}"}
    if kind == "meta_0002_0002":
        elem = next((e for e in elems if e.tag == 0x00020002), None)
        if elem is None:
            kind = "element"
        else:
            value = rng.choice((0xFFFF, 0xFFFE, elem.length + 1, 0))
            return _put(data, elem.len_offset, "<H", value), {"variant": f"(0002,0002) length={value}"}
    pixel = next((e for e in elems if e.tag == 0x7FE00010), None)
    elem = pixel if kind == "pixel" and pixel is not None else rng.choice(elems)
    e = "<" if elem.little else ">"
    rest = len(data) - elem.value_offset
    params: dict[str, Any] = {}
    if elem.len_size == 4:
        choice = rng.choice(("0xFFFFFFF0", "swallow", "swallow+1", "odd", "zero", "undefined"))
        value = {
            "0xFFFFFFF0": 0xFFFFFFF0,
            "swallow": rest,
            "swallow+1": rest + 1,
            "odd": elem.length | 1 if elem.length != 0xFFFFFFFF else 0xFFFFFFFE,
            "zero": 0,
            "undefined": 0xFFFFFFFF,
        }[choice]
        fmt = e + "I"
    else:
        choice = rng.choice(("0xFFFF", "swallow", "odd", "zero"))
        value = {"0xFFFF": 0xFFFF, "swallow": min(rest, 0xFFFF), "odd": elem.length | 1, "zero": 0}[choice]
        fmt = e + "H"
    pixel_at = seed.info.get("pixel_elem_offset")
    if choice == "swallow" and value == rest and pixel_at is not None and elem.offset < pixel_at:
        params["expect_pixels"] = False  # a valid file whose last element holds the rest, pixels included
    variant = f"({elem.tag >> 16:04X},{elem.tag & 0xFFFF:04X}) length {choice}"
    return _put(data, elem.len_offset, fmt, value), {"variant": variant, "length": value, **params}


def _huge_length_png(seed: Seed, rng: random.Random) -> Mutation | None:
    chunks = seed.info["chunks"]
    pos, kind, _, length = rng.choice([c for c in chunks if c[1] != b"IHDR"] or chunks)
    value = rng.choice((0xFFFFFFF0, 0x7FFFFFFF, len(seed.data), 0, length + 1))
    return _put(seed.data, pos, ">I", value), {"variant": f"{kind.decode()} length={value}"}


def _huge_length_jpeg(seed: Seed, rng: random.Random) -> Mutation | None:
    marker, pos, length = rng.choice(seed.info["segments"])
    value = rng.choice((0xFFFF, 0, 1, 2, length + 1))
    return _put(seed.data, pos + 2, ">H", value), {"variant": f"marker {marker:02X} length={value}"}


def _tiff_fmt(seed: Seed, dtype: int) -> str:
    e = "<" if seed.info["byteorder"] == "<" else ">"
    return e + ("H" if int(dtype) == 3 else "I")


def _huge_length_tiff(seed: Seed, rng: random.Random) -> Mutation | None:
    tags = seed.info["tags"]
    e = "<" if seed.info["byteorder"] == "<" else ">"
    kind = rng.choice(("StripByteCounts", "StripOffsets", "ifd_entries", "ifd_loop", "first_ifd"))
    data = seed.data
    if kind in ("StripByteCounts", "StripOffsets") and kind in tags:
        valueoffset, dtype, _, _ = tags[kind]
        big = 0xFFFF if int(dtype) == 3 else 0xFFFFFFF0
        value = rng.choice((big, len(data) + 1000, 0)) if kind == "StripOffsets" else rng.choice((big, 0))
        return _put(data, valueoffset, _tiff_fmt(seed, dtype), value), {"variant": f"{kind}[0]={value}"}
    first = seed.info["ifds"][0]
    if kind == "ifd_entries":
        value = rng.choice((0xFFFF, 0, 1000))
        return _put(data, first, e + "H", value), {"variant": f"IFD entry count={value}"}
    if kind == "ifd_loop":
        last = seed.info["ifds"][-1]
        (n,) = struct.unpack(e + "H", data[last : last + 2])
        target = rng.choice((first, last))
        return _put(data, last + 2 + 12 * n, e + "I", target), {"variant": f"next IFD -> {target} (loop)"}
    value = rng.choice((0xFFFFFFF0, len(data) + 8, 0, 3))
    return _put(data, 4, e + "I", value), {"variant": f"first IFD offset={value}"}


def _nifti_fields(seed: Seed) -> dict[str, tuple[int, str, int]]:
    """``{field: (offset, struct code, count)}`` of the NIfTI header fields the operators touch."""
    if seed.info["version"] == 1:
        return {
            "dim": (40, "h", 8),
            "datatype": (70, "h", 1),
            "bitpix": (72, "h", 1),
            "pixdim": (76, "f", 8),
            "vox_offset": (108, "f", 1),
            "scl_slope": (112, "f", 1),
        }
    return {
        "dim": (16, "q", 8),
        "datatype": (12, "h", 1),
        "bitpix": (14, "h", 1),
        "pixdim": (104, "d", 8),
        "vox_offset": (168, "q", 1),
        "scl_slope": (176, "d", 1),
    }


def _nifti_put(seed: Seed, data: bytes, name: str, index: int, value: Any) -> bytes:
    off, code, _ = _nifti_fields(seed)[name]
    e = "<" if seed.info["little"] else ">"
    return _put(data, off + index * struct.calcsize(code), e + code, value)


def _huge_length_nifti(seed: Seed, rng: random.Random) -> Mutation | None:
    value = rng.choice((1e12, -352, len(seed.data) + 100, 349, 0, 2**31))
    if seed.info["version"] == 2:
        value = int(value)
    return _nifti_put(seed, seed.data, "vox_offset", 0, value), {"variant": f"vox_offset={value}"}


def _huge_length_npz(seed: Seed, rng: random.Random) -> Mutation | None:
    data = seed.data
    cd = data.rindex(b"PK\x01\x02")
    where = rng.choice(("local compressed size", "local uncompressed size", "central sizes", "eocd count"))
    value = rng.choice((0xFFFFFFF0, 0, len(data) * 4))
    if where == "local compressed size":
        return _put(data, 18, "<I", value), {"variant": f"{where}={value}"}
    if where == "local uncompressed size":
        return _put(data, 22, "<I", value), {"variant": f"{where}={value}"}
    if where == "central sizes":
        return _put(_put(data, cd + 20, "<I", value), cd + 24, "<I", value), {"variant": f"{where}={value}"}
    eocd = data.rindex(b"PK\x05\x06")
    count = rng.choice((0xFFFF, 0, 100))
    return _put(_put(data, eocd + 8, "<H", count), eocd + 10, "<H", count), {"variant": f"{where}={count}"}


def op_huge_length(seed: Seed, rng: random.Random) -> Mutation | None:
    """An absurd length field (per format)."""
    if seed.inner is not None:
        return _via_inner(seed, rng, op_huge_length)
    fn = {
        "dicom": _huge_length_dicom,
        "png": _huge_length_png,
        "jpeg": _huge_length_jpeg,
        "tiff": _huge_length_tiff,
        "nifti1": _huge_length_nifti,
        "nifti2": _huge_length_nifti,
        "npz": _huge_length_npz,
    }[seed.fmt]
    if seed.fmt == "dicom" and seed.info["deflated"] and rng.random() < 0.7:
        return None
    return fn(seed, rng)


#: (keyword, tag, VR, candidate values) of the DICOM image attributes ``absurd_dims`` sets.
DICOM_DIMS: tuple[tuple[str, int, bytes, tuple[Any, ...]], ...] = (
    ("Rows+Columns", 0, b"US", (65535,)),
    ("Rows", 0x00280010, b"US", (65535, 0, 1, 32768)),
    ("Columns", 0x00280011, b"US", (65535, 0, 1, 32768)),
    (
        "NumberOfFrames",
        0x00280008,
        b"IS",
        ("999999999999", "-1", "abc", "0", "2147483648", "1e3", "65536", ""),
    ),
    ("BitsAllocated", 0x00280100, b"US", (0, 1, 7, 12, 13, 33, 64, 255)),
    ("BitsStored", 0x00280101, b"US", (0, 200, 65535)),
    ("HighBit", 0x00280102, b"US", (65535, 31)),
    ("SamplesPerPixel", 0x00280002, b"US", (0, 2, 4, 255)),
    ("PixelRepresentation", 0x00280103, b"US", (2, 65535)),
    ("PlanarConfiguration", 0x00280006, b"US", (7,)),
    ("PhotometricInterpretation", 0x00280004, b"CS", ("PALETTE COLOR", "YBR_FULL_422", "GARBAGE", "")),
)


def _absurd_dims_dicom(seed: Seed, rng: random.Random) -> Mutation | None:
    if seed.info["deflated"] or not seed.info["elements"]:
        return None
    data = seed.data
    changes = []
    for keyword, tag, vr, values in rng.sample(DICOM_DIMS, rng.choice((1, 1, 2))):
        value = rng.choice(values)
        changes.append(f"{keyword}={value}")
        elems, _ = dicom_elements(data)
        little = next((e.little for e in elems if not e.meta), True)
        for t in (0x00280010, 0x00280011) if keyword == "Rows+Columns" else (tag,):
            raw = struct.pack("<H" if little else ">H", value) if vr == b"US" else str(value).encode()
            data = set_dicom_value(data, elems, t, vr, raw)
            elems, _ = dicom_elements(data)
    return data, {"variant": ",".join(changes)}


def _absurd_dims_nifti(seed: Seed, rng: random.Random) -> Mutation | None:
    data = seed.data
    off, code, _ = _nifti_fields(seed)["dim"]
    e = "<" if seed.info["little"] else ">"
    ndim = struct.unpack(e + code, data[off : off + struct.calcsize(code)])[0]
    value: Any
    big = 32767 if seed.info["version"] == 1 else rng.choice((32767, 2**40))
    kind = rng.choice(("dim_k", "dim_k", "all_dims", "dim0", "datatype", "bitpix", "pixdim", "scl_slope"))
    if kind == "dim_k":
        k = rng.randrange(1, max(2, min(int(ndim), 7) + 1))
        value = rng.choice((big, -1, 0, -32768 if seed.info["version"] == 1 else -(2**40)))
        return _nifti_put(seed, data, "dim", k, value), {"variant": f"dim[{k}]={value}"}
    if kind == "all_dims":
        for k in range(1, max(2, min(int(ndim), 7) + 1)):
            data = _nifti_put(seed, data, "dim", k, big)
        return data, {"variant": f"dim[1..{ndim}]={big}"}
    if kind == "dim0":
        value = rng.choice((8, 0, -1, 9, 7))
        return _nifti_put(seed, data, "dim", 0, value), {"variant": f"dim[0]={value}"}
    if kind == "datatype":
        value = rng.choice((0, 9999, 2048, 1, 128, 1792))
        return _nifti_put(seed, data, "datatype", 0, value), {"variant": f"datatype={value}"}
    if kind == "bitpix":
        value = rng.choice((7, 0, -8, 4096))
        return _nifti_put(seed, data, "bitpix", 0, value), {"variant": f"bitpix={value}"}
    if kind == "pixdim":
        value = rng.choice((float("nan"), float("inf"), -1.0, 0.0, 1e38))
        k = rng.randrange(0, 4)
        return _nifti_put(seed, data, "pixdim", k, value), {"variant": f"pixdim[{k}]={value}"}
    value = rng.choice((float("nan"), float("inf"), 0.0, -1e38))
    return _nifti_put(seed, data, "scl_slope", 0, value), {"variant": f"scl_slope={value}"}


def _absurd_dims_png(seed: Seed, rng: random.Random) -> Mutation | None:
    data = bytearray(seed.data)
    kind = rng.choice(("width", "height", "both", "bit_depth", "color_type", "interlace"))
    if kind in ("width", "height", "both"):
        value = rng.choice((0, 65535, 0x7FFFFFFF, 0xFFFFFFFF, 32768, 100000))
        if kind in ("width", "both"):
            data[16:20] = struct.pack(">I", value)
        if kind in ("height", "both"):
            data[20:24] = struct.pack(">I", value)
    else:
        pos = {"bit_depth": 24, "color_type": 25, "interlace": 28}[kind]
        value = rng.choice(
            {"bit_depth": (3, 7, 17, 0), "color_type": (1, 5, 7, 255), "interlace": (1, 2)}[kind]
        )
        data[pos] = value
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC stays valid
    return bytes(data), {"variant": f"IHDR {kind}={value}"}


def _absurd_dims_jpeg(seed: Seed, rng: random.Random) -> Mutation | None:
    sof = [s for s in seed.info["segments"] if 0xC0 <= s[0] <= 0xCF and s[0] not in (0xC4, 0xC8, 0xCC)]
    if not sof:
        return None
    _, pos, _ = sof[0]
    kind = rng.choice(("height", "width", "both", "components", "precision"))
    data = seed.data
    if kind == "components":
        value = rng.choice((0, 255, 4))
        return _put(data, pos + 9, ">B", value), {"variant": f"SOF components={value}"}
    if kind == "precision":
        value = rng.choice((0, 16, 12, 255))
        return _put(data, pos + 4, ">B", value), {"variant": f"SOF precision={value}"}
    value = rng.choice((65535, 0, 32768))
    if kind in ("height", "both"):
        data = _put(data, pos + 5, ">H", value)
    if kind in ("width", "both"):
        data = _put(data, pos + 7, ">H", value)
    return data, {"variant": f"SOF {kind}={value}"}


def _absurd_dims_tiff(seed: Seed, rng: random.Random) -> Mutation | None:
    tags = seed.info["tags"]
    name = rng.choice(
        ("ImageWidth", "ImageLength", "ImageWidth", "BitsPerSample", "SamplesPerPixel", "RowsPerStrip")
    )
    if name not in tags:
        return None
    valueoffset, dtype, _, _ = tags[name]
    fmt = _tiff_fmt(seed, dtype)
    top = 0xFFFF if fmt.endswith("H") else 0xFFFFFFFF
    values = {
        "ImageWidth": (top, 65535, 0, 1 << 20),
        "ImageLength": (top, 65535, 0, 1 << 20),
        "BitsPerSample": (3, 64, 0, 24),
        "SamplesPerPixel": (0, 200, 4),
        "RowsPerStrip": (0, top),
    }[name]
    value = rng.choice(values)
    return _put(seed.data, valueoffset, fmt, value), {"variant": f"{name}={value}"}


def _npy_header(shape: Any, descr: str, fortran: bool = False) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"shape": shape, "fortran_order": fortran, "descr": descr})
    return buf.getvalue()


def _rezip(members: dict[str, bytes], stored: bool, comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, body in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            zf.writestr(info, body)
        zf.comment = comment
    return buf.getvalue()


def _absurd_dims_npz(seed: Seed, rng: random.Random) -> Mutation | None:
    import numpy as np

    members = dict(seed.info["members"])
    key = rng.choice([k for k in members if k.endswith("_images.npy")])
    body = members[key]
    arr = np.load(io.BytesIO(body), allow_pickle=False)
    descr: Any = np.lib.format.dtype_to_descr(arr.dtype)
    hlen = len(_npy_header(arr.shape, descr))
    n = arr.shape[0]
    kind = rng.choice(("shape", "shape", "shape", "descr", "fortran", "labels"))
    if kind == "labels":
        lab = key.replace("_images", "_labels")
        members[lab] = _npy_header((n + 7, 1), "|u1") + b"\x00" * (n + 7)
        return _rezip(members, seed.info["stored"]), {"variant": f"{lab} has {n + 7} rows for {n} images"}
    shape: Any = arr.shape
    fortran = False
    if kind == "shape":
        shape = rng.choice(
            ((65535, 65535, 65535), (2**31, 28, 28), (n, 0, 28), (n, 28, 28, 28, 28), (), (n, 4096, 4096))
        )
    elif kind == "descr":
        descr = rng.choice(("<U10", "|O", "<c16", ">f8", "|V7", "<M8[s]"))
    else:
        fortran = True
    members[key] = _npy_header(shape, descr, fortran) + body[hlen:]
    return _rezip(members, seed.info["stored"]), {
        "variant": f"{key} shape={shape} descr={descr} fortran={fortran}"
    }


def op_absurd_dims(seed: Seed, rng: random.Random) -> Mutation | None:
    """Absurd image dimensions or pixel format fields (per format)."""
    if seed.inner is not None:
        return _via_inner(seed, rng, op_absurd_dims)
    fn = {
        "dicom": _absurd_dims_dicom,
        "png": _absurd_dims_png,
        "jpeg": _absurd_dims_jpeg,
        "tiff": _absurd_dims_tiff,
        "nifti1": _absurd_dims_nifti,
        "nifti2": _absurd_dims_nifti,
        "npz": _absurd_dims_npz,
    }[seed.fmt]
    return fn(seed, rng)


# ---------------------------------------------------------------------------- generated files

#: Sequence tags nested by ``deep_sequence``: removed (X), kept with per-attribute rules (U), private.
DEEP_TAGS = (("ContentSequence", 0x0040A730), ("ReferencedImageSequence", 0x00081140), ("private", 0))


def _el_le(tag: int, vr: bytes, value: bytes, undefined: bool = False) -> bytes:
    value = _pad(value, vr)
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", 0xFFFFFFFF if undefined else len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def nested_sequence(
    tag: int, depth: int, leaf: list[tuple[int, bytes]], defined: bool, creator: tuple[int, bytes] | None
) -> bytes:
    """Bytes of one SQ element nested ``depth`` levels deep (explicit VR little endian).

    Args:
        tag: the sequence tag used at every level.
        depth: number of nested sequence levels.
        leaf: ``(tag, element bytes)`` of the innermost item.
        defined: defined lengths (else undefined lengths with delimiters).
        creator: ``(tag, element bytes)`` of a private creator repeated in every item.
    """
    item_elems = list(leaf)
    seq = b""
    for _ in range(depth):
        elems = sorted([*item_elems, *([creator] if creator else [])], key=lambda t: t[0])
        content = b"".join(b for _, b in elems)
        if defined:
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
            seq = _el_le(tag, b"SQ", item)
        else:
            item = (
                struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
                + content
                + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            )
            seq = _el_le(tag, b"SQ", item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), undefined=True)
        item_elems = [(tag, seq)]
    return seq


def make_deep_sequence(seed: Seed, depth: int, defined: bool, kind: str, nonce: int) -> Mutation:
    """A copy of an explicit-VR-little-endian DICOM seed with a ``depth``-level nested sequence."""
    elems: list[Elem] = seed.info["elements"]
    groups = {e.tag >> 16 for e in elems}
    private_group = next(g for g in (0x0033, 0x0035, 0x0037, 0x0039) if g not in groups)
    name = f"DEEP^NESTED^{nonce:06d}".encode()
    leaf = [
        (0x00100010, _el_le(0x00100010, b"PN", name)),
        (0x00100020, _el_le(0x00100020, b"LO", f"DEEPID{nonce:08d}".encode())),
        (0x00080080, _el_le(0x00080080, b"LO", f"DEEP INSTITUTION {nonce:06d}".encode())),
    ]
    creator = None
    prefix = b""
    if kind == "private":
        ctag = (private_group << 16) | 0x0010
        creator = (ctag, _el_le(ctag, b"LO", b"FUZZ DEEP"))
        tag = (private_group << 16) | 0x1001
        prefix = creator[1]
    else:
        tag = dict(DEEP_TAGS)[kind]
    seq = prefix + nested_sequence(tag, depth, leaf, defined, creator)
    first = tag if not creator else creator[0]
    after = next((e for e in elems if not e.meta and e.tag > first), None)
    at = after.offset if after is not None else len(seed.data)
    if _find(elems, first) is not None or _find(elems, tag) is not None:
        old = _find(elems, tag) or _find(elems, first)
        assert old is not None
        end = (
            old.value_offset + old.length
            if old.length != 0xFFFFFFFF
            else _skip_undefined(seed.data, old.value_offset, True, False)
        )
        data = seed.data[: old.offset] + seq + seed.data[end or old.offset :]
    else:
        data = seed.data[:at] + seq + seed.data[at:]
    params = {
        "variant": f"{kind} depth={depth} {'defined' if defined else 'undefined'} lengths",
        "phi": {"tag": tag, "private_creator": creator is not None, "nonce": nonce},
    }
    return data, params


def deep_phi_dataset(tag: int, private: bool, nonce: int) -> Any:
    """A shallow dataset with the same PHI as a :func:`make_deep_sequence` file (for ``tests.phi``)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.PatientName = f"DEEP^NESTED^{nonce:06d}"
    item.PatientID = f"DEEPID{nonce:08d}"
    item.InstitutionName = f"DEEP INSTITUTION {nonce:06d}"
    ds = Dataset()
    if private:
        ds.add_new((tag & 0xFFFF0000) | 0x0010, "LO", "FUZZ DEEP")
    ds.add_new(tag, "SQ", Sequence([item]))
    return ds


def op_deep_sequence(seed: Seed, rng: random.Random) -> Mutation | None:
    """A DICOM whose dataset holds a deeply nested sequence (random depth, lengths and tag)."""
    if (
        seed.fmt != "dicom"
        or seed.info["implicit"]
        or not seed.info["little"]
        or not seed.info["preamble"]
        or seed.info["deflated"]
    ):
        return None
    depth = rng.choice((16, 64, 200, 500, 1000, 2000))
    kind = rng.choice([k for k, _ in DEEP_TAGS])
    return make_deep_sequence(seed, depth, rng.random() < 0.3, kind, rng.randrange(10**6))


def gzip_of_zeros(size: int, prefix: bytes = b"", block: int = 16 * MIB) -> bytes:
    """A gzip stream of ``prefix`` + zeros up to ``size`` bytes, built in O(block) time.

    After a full flush the deflate state is reset, so every block of zeros compresses to the same bytes:
    one block is compressed and repeated (about 1000:1).
    """
    assert size % block == 0 and len(prefix) < block
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(prefix + bytes(block - len(prefix))) + comp.flush(zlib.Z_FULL_FLUSH)
    body = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    crc = zlib.crc32(prefix + bytes(block - len(prefix)))
    zeros = bytes(block)
    blocks = size // block - 1
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x02\xff"
    return header + head + body * blocks + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


def npz_bomb(shape: tuple[int, ...], block: int = 16 * MIB) -> bytes:
    """An ``.npz`` whose deflated ``train_images.npy`` member is a uint8 zero array of ``shape``."""
    import numpy as np

    header = _npy_header(shape, "|u1")
    size = int(np.prod(shape))
    assert size % block == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    body = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    crc = zlib.crc32(header)
    zeros = bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    raw = head + body * (size // block) + tail
    usize = len(header) + size
    labels = _npy_header((shape[0], 1), "|u1") + bytes(shape[0])
    entries = [
        (b"train_images.npy", 8, raw, crc, usize),
        (b"train_labels.npy", 0, labels, zlib.crc32(labels), len(labels)),
    ]
    out = io.BytesIO()
    central = []
    for name, method, payload, c, u in entries:
        offset = out.tell()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, c, len(payload), u, len(name), 0)
        )
        out.write(name + payload)
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                c,
                len(payload),
                u,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    cd_start = out.tell()
    for entry in central:
        out.write(entry)
    cd_size = out.tell() - cd_start
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), cd_size, cd_start, 0))
    return out.getvalue()


def make_bomb(kind: str, seeds: dict[str, Seed], scale: float) -> Mutation:
    """One compression bomb: ``gzip_zeros``, ``gzip_padded_dicom``, ``nested_gzip`` or ``npz_zeros``."""
    if kind == "gzip_zeros":
        size = int(1.5 * GIB * scale) // (16 * MIB) * 16 * MIB or 16 * MIB
        return gzip_of_zeros(size), {
            "variant": f"gzip of {size} zero bytes",
            "expect_pixels": False,
            "ext": ".gz",
        }
    if kind == "gzip_padded_dicom":
        ct = seeds["dicom/CT_small.dcm"].data
        size = int(512 * MIB * scale) // (16 * MIB) * 16 * MIB or 16 * MIB
        return gzip_of_zeros(size, prefix=ct), {
            "variant": f"CT_small.dcm + zeros to {size} bytes, gzip",
            "ext": ".dcm.gz",
        }
    if kind == "nested_gzip":
        inner = gzip.compress(seeds["dicom/CT_small.dcm"].data, mtime=0)
        return gzip.compress(inner, mtime=1), {
            "variant": "gzip of a gzip of CT_small.dcm",
            "expect_pixels": False,
            "ext": ".dcm.gz.gz",
        }
    frames = max(64, int(16384 * scale) // 256 * 256)
    return npz_bomb((frames, 256, 256)), {
        "variant": f"npz member declares ({frames}, 256, 256) uint8, deflated",
        "ext": ".npz",
    }


BOMBS = ("gzip_zeros", "gzip_padded_dicom", "nested_gzip", "npz_zeros")

Operator = Callable[[Seed, random.Random], Mutation | None]


def _must_change(fn: Operator) -> Operator:
    """``fn``, returning None (the caller draws again) when the mutation left the bytes as they were."""

    def op(seed: Seed, rng: random.Random) -> Mutation | None:
        got = fn(seed, rng)
        return None if got is None or got[0] == seed.data else got

    op.__doc__ = fn.__doc__
    return op


OPS: dict[str, Operator] = {
    name: _must_change(fn)
    for name, fn in {
        "benign": op_benign,
        "odd_name": op_benign,
        "flip_header": op_flip_header,
        "flip_pixels": op_flip_pixels,
        "truncate": op_truncate,
        "huge_length": op_huge_length,
        "absurd_dims": op_absurd_dims,
        "deep_sequence": op_deep_sequence,
    }.items()
}


# ============================================================================ corpus


@dataclasses.dataclass
class Case:
    """One corpus file."""

    i: int
    op: str
    seed: str
    data: bytes
    params: dict[str, Any]
    name_style: str = "plain"
    rel: str = ""


def odd_name(template: str, i: int, ext: str) -> str:
    """An odd file name (may contain ``/`` for sub-folders and lone surrogates for non-UTF-8 bytes)."""
    return template.replace("{i}", f"{i:05d}").replace("{ext}", ext).replace("{{", "{").replace("}}", "}")


def _fixed_cases(seeds: list[Seed], ops: set[str], bomb_scale: float) -> list[tuple[str, Any]]:
    """The fixed part of the corpus: ``(op, argument)`` in order."""
    fixed: list[tuple[str, Any]] = []
    if "empty" in ops:
        fixed.append(("empty", None))
    if "preamble_only" in ops:
        fixed.append(("preamble_only", None))
    if "odd_name" in ops:
        fixed.extend(("odd_name", t) for t in ODD_NAMES)
    if "deep_sequence" in ops:
        fixed.extend(("deep_sequence", d) for d in ((64, False), (200, False), (200, True), (1000, False)))
    if "seed" in ops:
        fixed.extend(("seed", s.name) for s in seeds)
    if "compression_bomb" in ops and bomb_scale > 0:
        fixed.extend(("compression_bomb", b) for b in BOMBS)
    return fixed


def _fixed_case(i: int, op: str, arg: Any, seeds: list[Seed], rng: random.Random, bomb_scale: float) -> Case:
    by_name = {s.name: s for s in seeds}
    if op == "empty":
        return Case(i, op, "-", b"", {"variant": "zero bytes", "expect_pixels": False})
    if op == "preamble_only":
        return Case(i, op, "-", bytes(128) + b"DICM", {"variant": "132 bytes", "expect_pixels": False})
    if op == "odd_name":
        benign = [s for s in seeds if s.fmt != "dicom" or s.info["preamble"]]  # op_benign applies
        if arg.lower().endswith(".dcm"):  # a name with a fixed .dcm extension: a DICOM seed
            benign = [s for s in benign if s.fmt == "dicom"]
        seed = rng.choice(benign)
        data, params = op_benign(seed, rng) or (seed.data, {})
        return Case(i, op, seed.name, data, params, name_style=arg)
    if op == "deep_sequence":
        depth, defined = arg
        seed = by_name.get("dicom/CT_small.dcm") or next(s for s in seeds if s.fmt == "dicom")
        kind = DEEP_TAGS[i % len(DEEP_TAGS)][0]
        data, params = make_deep_sequence(seed, depth, defined, kind, rng.randrange(10**6))
        return Case(i, op, seed.name, data, params)
    if op == "seed":
        seed = by_name[arg]
        return Case(i, op, seed.name, seed.data, {"variant": "unchanged"})
    data, params = make_bomb(arg, by_name, bomb_scale)
    return Case(i, op, "-" if arg in ("gzip_zeros", "npz_zeros") else "dicom/CT_small.dcm", data, params)


def _random_case(
    i: int, ops: list[str], weights: list[int], seeds: list[Seed], rng: random.Random, skip: list[str]
) -> Case | None:
    for _ in range(50):
        op = rng.choices(ops, weights)[0]
        candidates = [s for s in seeds if s.fmt == "dicom"] if op == "deep_sequence" else seeds
        seed = rng.choice(candidates)
        got = OPS[op](seed, rng)
        if got is None:
            continue
        data, params = got
        if any(s in _label(Case(i, op, seed.name, b"", params)) for s in skip):
            continue
        return Case(i, op, seed.name, data, params)
    return None


def _label(case: Case) -> str:
    """What ``--skip`` matches: ``op:variant|name=<name template>``."""
    return f"{case.op}:{case.params.get('variant', '')}|name={case.name_style}"


def _expect_pixels(case: Case, seeds: dict[str, Seed]) -> bool:
    if "expect_pixels" in case.params:
        return bool(case.params["expect_pixels"])
    seed = seeds.get(case.seed)
    return bool(seed and seed.has_pixels)


def build_corpus(
    root: Path, n: int, seed: int, ops: Iterable[str], skip: Iterable[str] = (), bomb_scale: float = 1.0
) -> tuple[list[dict[str, Any]], list[Seed]]:
    """Write ``n`` files under ``root`` (deterministic for ``seed``) and return the manifest entries."""
    seeds = build_seeds()
    by_name = {s.name: s for s in seeds}
    ops = set(ops)
    skip = list(skip)
    fixed = _fixed_cases(seeds, ops, bomb_scale)
    random_ops = [op for op in RANDOM_WEIGHTS if op in ops]
    weights = [RANDOM_WEIGHTS[op] for op in random_ops]
    root.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        case: Case | None = None
        for attempt in range(20):
            if i < len(fixed):
                op, arg = fixed[i]
                case = _fixed_case(i, op, arg, seeds, rng, bomb_scale)
            elif random_ops:
                case = _random_case(i, random_ops, weights, seeds, rng, skip)
            if (
                case is None
                or hashlib.sha256(case.data).hexdigest() not in seen
                or case.op in ("empty", "seed")
            ):
                break
            rng = random.Random(f"{seed}:{i}:{attempt}")
        if case is None or any(s in _label(case) for s in skip):
            continue
        seed_obj = by_name.get(case.seed)
        if (
            case.name_style == "plain"
            and case.op != "odd_name"
            and "odd_name" in ops
            and i >= len(fixed)
            and rng.random() < ODD_NAME_RATE
        ):
            case.name_style = rng.choice([t for t in ODD_NAMES if "{i}" in t])
            if any(s in _label(case) for s in skip):
                case.name_style = "plain"
        ext = case.params.get("ext") or (seed_obj.ext if seed_obj else ".dcm")
        if case.name_style == "plain":
            stem = seed_obj.stem if seed_obj else "generated"
            rel = f"{i:05d}-{case.op}-{stem}{ext}"
        else:
            rel = odd_name(case.name_style, i, ext)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.data)
        sha = hashlib.sha256(case.data).hexdigest()
        seen.add(sha)
        params = {k: v for k, v in case.params.items() if k not in ("phi", "ext")}
        entries.append(
            {
                "i": i,
                "path": rel,
                "op": case.op,
                "seed": case.seed,
                "variant": case.params.get("variant", ""),
                "params": params,
                "phi": case.params.get("phi"),
                "name_style": case.name_style,
                "size": len(case.data),
                "sha256": sha,
                "expect_pixels": _expect_pixels(case, by_name),
            }
        )
    return entries, seeds


# ============================================================================ running the CLI


class TreeWatch:
    """Samples RSS/VmHWM of a process tree by role (driver, jvm, worker); kills it past the limits."""

    def __init__(self, proc: subprocess.Popen, interval: float, kill_rss_kb: int, timeout: float) -> None:
        self.proc = proc
        self.interval = interval
        self.kill_rss_kb = kill_rss_kb
        self.deadline = time.monotonic() + timeout
        self.peak_kb: dict[str, int] = {"driver": 0, "jvm": 0, "worker": 0, "workers_total": 0}
        self.worker_peaks: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.procs: dict[int, Any] = {}  # psutil.Process objects seen (identity-checked on kill)
        self.killed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _role(self, p: Any) -> str:
        if p.pid not in self.roles:
            try:
                cmd = " ".join(p.cmdline())
                exe = Path((p.cmdline() or [""])[0]).name
            except Exception:
                cmd, exe = "", ""
            if p.pid == self.proc.pid:
                role = "driver"
            elif exe == "java":
                role = "jvm"
            elif "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
                role = "worker"
            else:
                role = "other"
            self.roles[p.pid] = role
        return self.roles[p.pid]

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                rss = p.memory_info().rss // 1024
            except psutil.Error:
                continue
            self.procs.setdefault(p.pid, p)
            peak = max(rss, _proc_status_kb(p.pid, "VmHWM") or 0)
            role = self._role(p)
            if role == "other":
                continue
            if role == "worker":
                total += rss
                self.worker_peaks[p.pid] = max(self.worker_peaks.get(p.pid, 0), peak)
                if rss > self.kill_rss_kb and self.killed is None:
                    self.killed = (
                        f"worker pid {p.pid} RSS {rss / MIB:.2f} GiB over the kill limit "
                        f"{self.kill_rss_kb / MIB:.2f} GiB"
                    )
                    self.kill()
            self.peak_kb[role] = max(self.peak_kb[role], peak)
        self.peak_kb["workers_total"] = max(self.peak_kb["workers_total"], total)
        if time.monotonic() > self.deadline and self.killed is None:
            self.killed = "timeout"
            self.kill()

    def kill(self) -> None:
        """Kill the process group of the CLI and every process seen in its tree."""
        import psutil

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in list(self.procs.values()):
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and p.is_running():
                    p.kill()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def medimg_executable() -> str:
    """The ``medimg`` script next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / "medimg"
    return str(local) if local.exists() else (shutil.which("medimg") or "medimg")


def run_cli(
    corpus: Path,
    out: Path,
    work: Path,
    master: str | None,
    timeout: float,
    kill_rss_gb: float,
    extra: list[str],
) -> dict[str, Any]:
    """Run ``medimg ingest`` on the corpus; return exit code, wall time, output, peaks.

    De-identification runs with fresh keys in ``work/keys`` and writes its vault to ``work/vault`` (outside
    ``out``, which the PHI scan reads), so :func:`path_originals` can map the pseudonymous ``source_path``
    of every row back to its corpus file.
    """
    from medimg_spark.privacy import generate_key_file

    keys, vault = work / "keys", work / "vault"
    shutil.rmtree(keys, ignore_errors=True)
    shutil.rmtree(vault, ignore_errors=True)
    deid_key, vault_key = generate_key_file(keys / "deid.key"), generate_key_file(keys / "vault.key")
    cmd = [medimg_executable(), "ingest", str(corpus), "--out", str(out), "--json"]
    cmd += ["--key-file", str(deid_key), "--vault", str(vault), "--vault-key-file", str(vault_key)]
    if master:
        cmd += ["--master", master]
    cmd += extra
    stdout_path, stderr_path = work / "cli.stdout", work / "cli.stderr"
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    started = time.perf_counter()
    with stdout_path.open("wb") as so, stderr_path.open("wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, cwd=REPO, env=env, start_new_session=True)
        with TreeWatch(proc, 0.2, int(kill_rss_gb * MIB), timeout) as watch:
            rc = proc.wait()
    wall = time.perf_counter() - started
    if watch.killed:
        watch.kill()
    else:
        _reap(watch)
    stdout = stdout_path.read_bytes()
    summary = None
    with contextlib.suppress(ValueError):
        text = stdout.decode("utf-8", "replace")
        summary = json.loads(text[text.index("{") :])
    return {
        "cmd": cmd,
        "vault": str(vault),
        "vault_key": str(vault_key),
        "exit_code": rc,
        "killed": watch.killed,
        "wall_s": round(wall, 2),
        "summary": summary,
        "peak_rss_gib": {k: round(v / MIB, 3) for k, v in watch.peak_kb.items()},
        "worker_peaks_gib": sorted((round(v / MIB, 3) for v in watch.worker_peaks.values()), reverse=True),
        "stdout": stdout,
        "stderr": stderr_path.read_bytes(),
    }


def _reap(watch: TreeWatch) -> None:
    """Kill what is left of the CLI's process tree (an orphaned daemon) after it exited."""
    import psutil

    for pid, p in list(watch.procs.items()):
        with contextlib.suppress(psutil.Error):
            if watch.roles.get(pid) in ("jvm", "worker") and p.is_running():
                p.kill()


# ============================================================================ checks


def ingest_error_classes() -> set[str]:
    """Names of ingest's own per-file error classes: :class:`IngestFileError` and its subclasses in every
    module of ``medimg_spark.io`` and ``medimg_spark.privacy`` (the quarantine's typed reasons)."""
    import importlib
    import pkgutil

    import medimg_spark.io
    import medimg_spark.privacy
    from medimg_spark.errors import IngestFileError

    for package in (medimg_spark.io, medimg_spark.privacy):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    names, todo = set(), [IngestFileError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def path_originals(vault: str, vault_key: str) -> dict[str, str]:
    """``{path pseudonym: original path}`` from a run's re-identification vault ({} when it has none)."""
    from medimg_spark.privacy.hook import PATH_KIND
    from medimg_spark.privacy.vault import read_vault

    if not any(Path(vault).glob("vault-*.parquet")):
        return {}
    table = read_vault(vault, vault_key).select(["pseudonym", "kind", "original"]).to_pylist()
    return {r["pseudonym"]: r["original"] for r in table if r["kind"] == PATH_KIND}


def read_table(root: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of the Parquet table under ``root`` (only ``columns`` that exist), or [] when absent."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    if not root.exists():
        return rows
    for f in sorted(root.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in f.relative_to(root).parts):
            continue
        pf = pq.ParquetFile(f)
        cols = [c for c in columns if c in pf.schema_arrow.names]
        rows.extend(pf.read(columns=cols).to_pylist())
    return rows


def _unescape_bytes(path: str) -> str:
    """``a\\xe9b`` (non-UTF-8 bytes written as ``\\xNN``) → the local name with that raw byte."""
    raw = re.sub(
        rb"\\x([0-9a-fA-F]{2})",
        lambda m: bytes([int(m.group(1), 16)]),
        path.encode("utf-8", "surrogateescape"),
    )
    return os.fsdecode(raw)


def uri_candidates(source_path: str) -> list[tuple[str, str]]:
    """``(mode, local path)`` a ``source_path`` may name: raw, percent-decoded once, ``\\xNN`` escapes.

    Raw comes first: ``file:/x/a%20b`` names the file ``a%20b`` when it exists (the corpus holds both
    ``twin a b.dcm`` and ``twin a%20b.dcm``, so a path that cannot tell them apart shows as a failure).
    """
    path = source_path
    if path.startswith("file:"):
        path = urllib.parse.urlparse(path).path if path.startswith("file://") else path[len("file:") :]
        if path.startswith("//"):
            path = path[1:]
    decoded = urllib.parse.unquote(path, errors="surrogateescape")
    return [
        ("raw", path),
        ("decoded", decoded),
        ("decoded-replace", urllib.parse.unquote(path)),
        ("raw-backslash-escapes", _unescape_bytes(path)),
        ("decoded-backslash-escapes", _unescape_bytes(decoded)),
    ]


def _uri_candidates(source_path: str) -> list[str]:
    return [c for _, c in uri_candidates(source_path)]


def account(
    entries: list[dict[str, Any]],
    corpus: Path,
    out: Path,
    summary: dict[str, Any] | None,
    wrapped: dict[str, str] | None = None,
    originals: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Match output rows to corpus files; return the per-property results and the tallies.

    Args:
        wrapped: ``{gzip seed: seed it wraps}``: an unmodified wrapper must end like the file it wraps.
        originals: ``{path pseudonym: original}`` (:func:`path_originals`) when the run de-identified paths.
    """
    by_abs: dict[str, dict[str, Any]] = {}
    for e in entries:
        by_abs[os.path.normpath(str(corpus / e["path"]))] = e
        e["rows"] = {
            "instances": 0,
            "images": 0,
            "q_file": [],
            "q_frame": 0,
            "has_pixels": None,
            "n_frames": None,
        }
        e["frames"] = set()
    listed = {
        os.path.normpath(os.fsdecode(os.path.join(d, f)))
        for d, _, fs in os.walk(os.fsencode(corpus))
        for f in fs
    }
    unknown: list[dict[str, Any]] = []
    match_modes: collections.Counter[str] = collections.Counter()

    def lookup(row: dict[str, Any], table: str) -> dict[str, Any] | None:
        source = (originals or {}).get(row["source_path"], row["source_path"])
        for mode, cand in uri_candidates(source):
            e = by_abs.get(os.path.normpath(cand))
            if e is not None:
                match_modes[mode] += 1
                return e
        unknown.append(
            {"table": table, "source_path": row["source_path"], "file_sha256": row.get("file_sha256")}
        )
        return None

    instances = read_table(out / "instances", ["source_path", "file_sha256", "has_pixels", "n_frames"])
    images = read_table(out / "images", ["source_path", "file_sha256", "frame_index"])
    quarantine = read_table(
        out / "quarantine",
        ["source_path", "file_sha256", "frame_index", "stage", "error_class", "error_message"],
    )
    for r in instances:
        hit = lookup(r, "instances")
        if hit is not None:
            hit["rows"]["instances"] += 1
            hit["rows"]["has_pixels"], hit["rows"]["n_frames"] = r["has_pixels"], r["n_frames"]
    for r in images:
        hit = lookup(r, "images")
        if hit is not None:
            hit["rows"]["images"] += 1
            hit["frames"].add(r["frame_index"])
    for r in quarantine:
        hit = lookup(r, "quarantine")
        if hit is None:
            continue
        if r["frame_index"] is None and r["stage"] in FILE_STAGES:
            hit["rows"]["q_file"].append((r["stage"], r["error_class"], (r["error_message"] or "")[:300]))
        else:
            hit["rows"]["q_frame"] += 1

    by_sha: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in entries:
        by_sha[e["sha256"]].append(e)

    def primaries(e: dict[str, Any]) -> int:
        rows = e["rows"]
        non_decode = sum(1 for q in rows["q_file"] if q[0] != "decode")
        decode_alone = sum(1 for q in rows["q_file"] if q[0] == "decode") if rows["instances"] == 0 else 0
        return rows["instances"] + non_decode + decode_alone

    failures: list[dict[str, Any]] = []
    deduplicated = 0
    for group in by_sha.values():
        counts = [primaries(e) for e in group]
        group_ok = all(c == 1 for c in counts) or (
            len(group) > 1 and sorted(counts) == [0] * (len(group) - 1) + [1]
        )
        if len(group) > 1 and sorted(counts) == [0] * (len(group) - 1) + [1]:
            deduplicated += len(group) - 1
        for e, c in zip(group, counts, strict=True):
            rows = e["rows"]
            decode_rows = [q for q in rows["q_file"] if q[0] == "decode"]
            problem = None
            if not group_ok and c == 0:
                problem = "no row in instances or quarantine"
            elif c > 1:
                problem = f"accounted {c} times"
            elif len(decode_rows) > 1:
                problem = f"{len(decode_rows)} file-level decode quarantine rows"
            if problem:
                failures.append(_failure(e, "accounting", problem))
    not_listed = sorted(set(by_abs) - listed)
    for p in not_listed:
        failures.append(
            {"property": "accounting", "path": p, "detail": "manifest file missing from the corpus listing"}
        )
    for u in unknown:
        failures.append(
            {
                "property": "accounting",
                "path": u["source_path"],
                "detail": f"{u['table']} row names a path outside the corpus",
                "sha256": u["file_sha256"],
            }
        )

    outcome: collections.Counter[str] = collections.Counter()
    for e in entries:
        rows = e["rows"]
        tables = [
            t
            for t, present in (
                ("instances", rows["instances"]),
                ("images", rows["images"]),
                ("quarantine", rows["q_file"] or rows["q_frame"]),
            )
            if present
        ]
        e["outcome"] = "+".join(tables) or "none"
        outcome[e["outcome"]] += 1

    # pixels and frames
    pixel_failures, frame_failures = [], []
    for e in entries:
        rows = e["rows"]
        if rows["instances"] != 1:
            continue
        quarantined = bool(rows["q_file"] or rows["q_frame"])
        if e["expect_pixels"] and rows["images"] == 0 and not quarantined:
            pixel_failures.append(
                _failure(
                    e,
                    "no_silent_pixel_loss",
                    f"instances row only (has_pixels={rows['has_pixels']}, n_frames={rows['n_frames']}): "
                    "no image rows, no quarantine row",
                )
            )
        n_frames = rows["n_frames"]
        decode_q = any(q[0] == "decode" for q in rows["q_file"]) or rows["q_frame"] > 0
        if n_frames is not None and n_frames < 0:
            frame_failures.append(_failure(e, "frames_consistent", f"negative n_frames={n_frames}"))
        elif rows["has_pixels"] and n_frames is not None and len(e["frames"]) != n_frames and not decode_q:
            frame_failures.append(
                _failure(
                    e,
                    "frames_consistent",
                    f"n_frames={n_frames} but {len(e['frames'])} image rows and no decode quarantine row",
                )
            )
        elif rows["images"] != len(e["frames"]):
            frame_failures.append(
                _failure(
                    e,
                    "frames_consistent",
                    f"{rows['images']} image rows for {len(e['frames'])} frame indices",
                )
            )

    control_failures = controls_consistent(entries, wrapped or {})

    # summary
    summary_problems = []
    if summary is not None:
        expect = {
            "files_seen": len(listed),
            "files_ingested": len(instances),
            "frames_written": len(images),
            "quarantined": len(quarantine),
        }
        for k, v in expect.items():
            if summary.get(k) != v:
                summary_problems.append(f"{k}={summary.get(k)} but expected {v}")
        if summary.get("duplicates_skipped", 0) != deduplicated:
            summary_problems.append(
                f"duplicates_skipped={summary.get('duplicates_skipped')} but {deduplicated} files "
                "share content with another one"
            )
    else:
        summary_problems.append("no JSON run summary on stdout")

    hist = collections.Counter((r["stage"], r["error_class"]) for r in quarantine)
    typed = ingest_error_classes()
    untyped = [
        {"property": "typed_reasons", "detail": f"{n} quarantine row(s) at {s} with error_class {c!r}"}
        for (s, c), n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))
        if c not in typed
    ]
    results = {
        "accounting": {"ok": not failures, "failures": failures},
        "summary_consistent": {
            "ok": not summary_problems,
            "failures": [{"property": "summary_consistent", "detail": p} for p in summary_problems],
        },
        "no_silent_pixel_loss": {"ok": not pixel_failures, "failures": pixel_failures},
        "frames_consistent": {"ok": not frame_failures, "failures": frame_failures},
        "controls_consistent": {"ok": not control_failures, "failures": control_failures},
        "typed_reasons": {"ok": not untyped, "failures": untyped},
    }
    tallies = {
        "rows": {"instances": len(instances), "images": len(images), "quarantine": len(quarantine)},
        "outcomes": dict(outcome.most_common()),
        "quarantine_histogram": [
            {"stage": s, "error_class": c, "n": n}
            for (s, c), n in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "quarantine_by_error_class": dict(
            collections.Counter(r["error_class"] for r in quarantine).most_common()
        ),
        "path_match_modes": dict(match_modes),
        "files_sharing_content": sum(len(g) for g in by_sha.values() if len(g) > 1),
        "deduplicated": deduplicated,
    }
    return results, tallies


CONTROL_OPS = ("seed", "benign", "odd_name")


def _signature(e: dict[str, Any]) -> str:
    """How a file ended: its tables and the (stage, error class) of its quarantine rows."""
    rows = e["rows"]
    quarantine = sorted(f"{stage}/{cls}" for stage, cls, _ in rows["q_file"])
    if rows["q_frame"]:
        quarantine.append("frame rows")
    return e["outcome"] + (f" [{', '.join(quarantine)}]" if quarantine else "")


def controls_consistent(entries: list[dict[str, Any]], wrapped: dict[str, str]) -> list[dict[str, Any]]:
    """Unmodified seeds, their benign copies and odd-named copies end alike; so do gzip wrappers."""
    reference: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["op"] == "seed":
            reference[e["seed"]] = e
    failures = []
    for e in entries:
        ref = reference.get(e["seed"])
        if e["op"] not in CONTROL_OPS or ref is None or e is ref or e["name_style"] == NON_UTF8_NAME:
            continue  # Spark cannot open a non-UTF-8 name: a read-stage quarantine row is accepted
        if _signature(e) != _signature(ref):
            failures.append(
                _failure(
                    e,
                    "controls_consistent",
                    f"ends as {_signature(e)}; the unmodified seed as {_signature(ref)}",
                )
            )
    for outer, inner in wrapped.items():
        a, b = reference.get(outer), reference.get(inner)
        if a is not None and b is not None and _signature(a) != _signature(b):
            failures.append(
                _failure(
                    a,
                    "controls_consistent",
                    f"gzip wrapper ends as {_signature(a)}; {inner} as {_signature(b)}",
                )
            )
    return failures


def _failure(e: dict[str, Any], prop: str, detail: str) -> dict[str, Any]:
    rows = e.get("rows", {})
    return {
        "property": prop,
        "path": e["path"],
        "op": e["op"],
        "seed": e["seed"],
        "variant": e["variant"],
        "name_style": e["name_style"],
        "detail": detail,
        "quarantine": [f"{s}/{c}: {m}" for s, c, m in rows.get("q_file", [])],
    }


def _text_blob(values: Iterable[Any]) -> bytes:
    parts: list[bytes] = []

    def add(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, str):
            parts.append(v.encode("utf-8", "surrogateescape"))
        elif isinstance(v, bytes | bytearray):
            parts.append(bytes(v))
        elif isinstance(v, dict):
            for x in v.values():
                add(x)
        elif isinstance(v, list | tuple):
            for x in v:
                add(x)

    for v in values:
        add(v)
    return b"\x00".join(parts)


def output_blobs(out: Path, stdout: bytes, stderr: bytes) -> dict[str, bytes]:
    """Every byte an ingest run produced, decoded: Parquet values (except pixels), other files, names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs: dict[str, bytes] = {"cli stdout": stdout, "cli stderr": stderr}
    names = []
    for p in sorted(out.rglob("*")) if out.exists() else []:
        rel = str(p.relative_to(out))
        names.append(rel)
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            pf = pq.ParquetFile(p)
            schema = pf.schema_arrow
            cols = [
                f.name
                for f in schema
                if f.name != "pixels"
                and not pa.types.is_floating(f.type)
                and not pa.types.is_integer(f.type)
                and not pa.types.is_boolean(f.type)
                and not pa.types.is_timestamp(f.type)
            ]
            table = pf.read(columns=cols)
            for col in cols:
                blobs[f"{rel} [{col}]"] = _text_blob(table.column(col).to_pylist())
            meta = pf.metadata.metadata or {}
            blobs[f"{rel} [footer metadata]"] = b"\x00".join(k + b"=" + v for k, v in meta.items())
        else:
            blobs[rel] = p.read_bytes()
    blobs["output file names"] = "\x00".join(names).encode("utf-8", "surrogateescape")
    return blobs


def phi_values(entries: list[dict[str, Any]], seeds: list[Seed]) -> list[str]:
    """PHI values of the seed DICOM files and generated deep sequences (rules of ``tests/phi.py``)."""
    import warnings

    import pydicom

    from medimg_spark.privacy import DeidConfig
    from tests.phi import collect_phi

    datasets = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in seeds:
            target = s.inner if s.inner is not None else s
            if target.fmt != "dicom":
                continue
            for skip in range(16):  # no_meta.dcm starts with a stray byte
                with contextlib.suppress(Exception):
                    ds = pydicom.dcmread(io.BytesIO(target.data[skip:]), force=True)
                    if len(ds) > 2:
                        datasets.append(ds)
                        break
        for e in entries:
            if e.get("phi"):
                phi = e["phi"]
                datasets.append(deep_phi_dataset(phi["tag"], phi["private_creator"], phi["nonce"]))
        values = collect_phi(datasets, DeidConfig(), b"\x5a" * 32)
    # a value without letters or digits ('^^^^', an empty person name) names no one, and tracebacks underline
    return [v for v in values if any(c.isalnum() for c in v)]


#: Tokens the tool generates at random, blanked before the PHI scan: their digit runs match short numeric
#: PHI values (times, 6-digit IDs) by chance. Pseudonymised UIDs (2.25.<39 digits>), hex digests (sha256,
#: image ids, pseudonyms) and UUIDs (Parquet part-file names).
RANDOM_TOKENS = re.compile(
    rb"2\.25\.\d{20,}|[0-9a-fA-F]{32,}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


def scrub(blob: bytes) -> bytes:
    """``blob`` with the tool's random tokens (:data:`RANDOM_TOKENS`) replaced by ``#``."""
    return RANDOM_TOKENS.sub(b"#", blob)


def check_phi(
    values: list[str], blobs: dict[str, bytes], out: Path, entries: list[dict[str, Any]], corpus: Path
) -> dict[str, Any]:
    """Find PHI values in the output blobs; name the source file of a Parquet hit when possible."""
    from tests.phi import find_phi

    found = find_phi(values, {name: scrub(blob) for name, blob in blobs.items()})
    by_abs = {os.path.normpath(str(corpus / e["path"])): e for e in entries}
    failures = []
    for value, name in found[:200]:
        failure: dict[str, Any] = {"property": "no_phi", "detail": f"PHI value {value!r} in {name}"}
        if " [" in name and name.endswith("]") and not name.endswith("[footer metadata]"):
            rel, col = name[:-1].split(" [", 1)
            sources = _rows_with(out / rel, col, value)
            for src in sources:
                e = next(
                    (by_abs[c] for c in map(os.path.normpath, _uri_candidates(src)) if c in by_abs), None
                )
                if e is not None:
                    failure.update({k: e[k] for k in ("path", "op", "seed", "variant", "name_style")})
                    break
            failure["source_paths"] = sources[:5]
        failures.append(failure)
    return {
        "ok": not found,
        "values_checked": len(values),
        "blobs_scanned": len(blobs),
        "bytes_scanned": sum(len(b) for b in blobs.values()),
        "failures": failures,
    }


def _rows_with(path: Path, column: str, value: str) -> list[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    cols = [column] + (
        ["source_path"] if "source_path" in pf.schema_arrow.names and column != "source_path" else []
    )
    hits = []
    for r in pf.read(columns=cols).to_pylist():
        if value.encode("utf-8", "ignore") in scrub(_text_blob([r[column]])):
            hits.append(str(r.get("source_path", "?")))
    return hits


# ============================================================================ triage (per file, no Spark)


def _worker_address_limit() -> int | None:
    """Bytes of ``spark.executor.pyspark.memory`` in the spark-defaults the CLI reads (None: unset)."""
    try:
        from medimg_spark.session import defaults_file, read_spark_defaults

        value = read_spark_defaults(defaults_file()).get("spark.executor.pyspark.memory")
    except Exception:
        return None
    m = re.fullmatch(r"(\d+)([kmgt]?)b?", (value or "").strip().lower())
    if not m:
        return None
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ") if m.group(2) else int(m.group(1)) * MIB


def triage_worker(list_file: str) -> int:
    """Run the per-file core of ingest on each listed file; print JSON lines ``start`` / ``done``."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from medimg_spark.io.files import FileContext, process_file
    from medimg_spark.io.planning import UNION_SCHEMA, rows_to_batch
    from medimg_spark.privacy import DeidConfig, Deidentifier
    from medimg_spark.privacy.hook import IngestDeidentifier

    limit = _worker_address_limit()
    if limit:  # as pyspark's worker does with spark.executor.pyspark.memory
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    hook = IngestDeidentifier(Deidentifier(DeidConfig(), os.urandom(32)), run_id="fuzz-triage")
    try:  # the context ingest builds from its default config (limits, time budget)
        from medimg_spark.config import IngestConfig
        from medimg_spark.io.ingest import _context

        ctx = _context("fuzz-triage", IngestConfig(), None, hook)
    except Exception:
        ctx = FileContext(run_id="fuzz-triage", deidentify=hook)
    schema = to_arrow_schema(UNION_SCHEMA)
    items = json.loads(Path(list_file).read_text())
    for idx, path in items:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: per-file peak RSS
        print(json.dumps({"start": idx}), flush=True)
        t0 = time.perf_counter()
        res: dict[str, Any] = {"done": idx}
        content = Path(path).read_bytes()
        uri = "file:" + urllib.parse.quote(os.fsencode(path))
        rows: list[dict[str, Any]] = []
        try:
            rows.extend(process_file(uri, content, ctx))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            res["escaped"] = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:500]}"
        try:
            rows_to_batch(rows, schema)
        except Exception as exc:
            res["arrow_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        res["kinds"] = dict(collections.Counter(r["_kind"] for r in rows))
        res["quarantine"] = [
            f"{r.get('stage')}/{r.get('error_class')}: {(r.get('error_message') or '')[:200]}"
            for r in rows
            if r["_kind"] == "quarantine"
        ]
        inst = next((r for r in rows if r["_kind"] == "instance"), None)
        if inst is not None:
            res["n_frames"], res["has_pixels"] = inst.get("n_frames"), inst.get("has_pixels")
        res["seconds"] = round(time.perf_counter() - t0, 3)
        res["peak_rss_gib"] = round((_proc_status_kb(os.getpid(), "VmHWM") or 0) / MIB, 3)
        del rows, content
        print(json.dumps(res), flush=True)
    return 0


def _pump(stream: Any, sink: Callable[[Any], None]) -> None:
    """Copy a subprocess pipe into ``sink`` line by line, then ``None``."""
    for line in stream:
        sink(line)
    sink(None)


def _triage_run(
    items: list[tuple[int, str]],
    work: Path,
    tag: str,
    kill_rss_kb: int,
    file_timeout: float,
    results: dict[int, dict[str, Any]],
) -> None:
    """Feed ``items`` to a triage worker; restart it after a crash, a kill or a hang."""
    import psutil

    pending = list(items)
    while pending:
        list_file = work / f"triage-{tag}.json"
        list_file.write_text(json.dumps(pending))
        proc = subprocess.Popen(
            [sys.executable, __file__, "--triage-worker", str(list_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,
        )
        lines: queue.Queue[bytes | None] = queue.Queue()

        stderr_tail: collections.deque[bytes | None] = collections.deque(maxlen=40)
        threading.Thread(target=_pump, args=(proc.stdout, lines.put), daemon=True).start()
        threading.Thread(target=_pump, args=(proc.stderr, stderr_tail.append), daemon=True).start()
        current: int | None = None
        started = time.monotonic()
        peak = 0
        verdict = None
        while True:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                line = b""
            if line is None:
                break
            if line:
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if "start" in msg:
                        current, started, peak = msg["start"], time.monotonic(), 0
                        stderr_tail.clear()
                    elif "done" in msg:
                        msg["sampled_peak_rss_gib"] = round(peak / MIB, 3)
                        results[msg["done"]] = msg
                        pending = [p for p in pending if p[0] != msg["done"]]
                        current = None
                continue
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(proc.pid).memory_info().rss // 1024
                peak = max(peak, rss)
                if rss > kill_rss_kb:
                    verdict = f"killed: RSS {rss / MIB:.2f} GiB over the kill limit"
            if current is not None and time.monotonic() - started > file_timeout:
                verdict = f"killed: no result after {file_timeout:.0f} s"
            if verdict:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
        rc = proc.wait()
        tail = b"".join(b for b in stderr_tail if b)[-800:].decode("utf-8", "replace")
        if current is not None:
            what = verdict or f"worker died with exit code {rc}: {tail}"
            results[current] = {"done": current, "crash": what, "sampled_peak_rss_gib": round(peak / MIB, 3)}
            pending = [p for p in pending if p[0] != current]
        elif pending and not any(p[0] in results for p in items if p not in pending) and rc != 0:
            for idx, _ in pending:  # the worker cannot even start: give up on this share
                results[idx] = {"done": idx, "crash": f"triage worker failed to start (exit {rc}): {tail}"}
            pending = []
        elif pending:
            results[pending[0][0]] = {
                "done": pending[0][0],
                "crash": f"worker exited {rc} between files: {tail}",
            }
            pending = pending[1:]


def triage(
    entries: list[dict[str, Any]],
    corpus: Path,
    work: Path,
    workers: int,
    kill_rss_gb: float,
    limit_gb: float,
    file_timeout: float,
) -> dict[str, Any]:
    """Per-file check of the ingest core in watched subprocesses; findings name operator and seed."""
    items = [(e["i"], str(corpus / e["path"])) for e in entries]
    results: dict[int, dict[str, Any]] = {}
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=_triage_run,
            args=(items[k::workers], work, str(k), int(kill_rss_gb * MIB), file_timeout, results),
        )
        for k in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_i = {e["i"]: e for e in entries}
    findings = []
    for i, res in sorted(results.items()):
        e = by_i[i]
        problems = []
        if "crash" in res:
            problems.append(res["crash"])
        if "escaped" in res:
            problems.append(f"process_file raised {res['escaped']}")
        if "arrow_error" in res:
            problems.append(f"rows do not convert to Arrow: {res['arrow_error']}")
        peak = max(res.get("peak_rss_gib", 0), res.get("sampled_peak_rss_gib", 0))
        if peak > limit_gb:
            problems.append(f"peak RSS {peak:.2f} GiB over {limit_gb} GiB")
        if res.get("n_frames") is not None and res["n_frames"] < 0:
            problems.append(f"negative n_frames={res['n_frames']}")
        if problems:
            findings.append(
                {
                    **{k: e[k] for k in ("path", "op", "seed", "variant", "name_style")},
                    "problems": problems,
                    "quarantine": res.get("quarantine", []),
                    "seconds": res.get("seconds"),
                }
            )
    missing = sorted(set(by_i) - set(results))
    slowest = sorted(results.values(), key=lambda r: -(r.get("seconds") or 0))[:5]
    return {
        "ok": not findings and not missing,
        "wall_s": round(time.perf_counter() - started, 1),
        "files": len(results),
        "findings": findings,
        "missing": [by_i[i]["path"] for i in missing],
        "max_peak_rss_gib": max(
            [max(r.get("peak_rss_gib", 0), r.get("sampled_peak_rss_gib", 0)) for r in results.values()] or [0]
        ),
        "slowest": [{"path": by_i[r["done"]]["path"], "seconds": r.get("seconds")} for r in slowest],
        "per_file": [
            {
                "path": by_i[i]["path"],
                "op": by_i[i]["op"],
                "seed": by_i[i]["seed"],
                "variant": by_i[i]["variant"],
                **{k: v for k, v in r.items() if k != "done"},
            }
            for i, r in sorted(results.items())
        ],
    }


# ============================================================================ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The harness's command line."""
    p = argparse.ArgumentParser(description="Fuzz `medimg ingest` with seeded mutations of real files.")
    p.add_argument("--n", type=int, default=10000, help="number of corpus files (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the corpus (default 1)")
    p.add_argument("--work", help="working directory: corpus/, out/, manifest.json (default: a new temp dir)")
    p.add_argument("--report", help="report JSON (default WORK/fuzz_report.json)")
    p.add_argument("--master", default="local[2]", help="Spark master for the CLI (default local[2])")
    p.add_argument(
        "--ops",
        default=",".join(ALL_OPS),
        help=f"comma-separated operators (default all: {','.join(ALL_OPS)})",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TEXT",
        help="leave out (redraw) files whose 'op:variant|name=TEMPLATE' contains TEXT (repeatable)",
    )
    p.add_argument(
        "--bomb-scale", type=float, default=1.0, help="size factor of the compression bombs (default 1)"
    )
    p.add_argument(
        "--max-worker-rss-gb", type=float, default=2.5, help="limit of the peak RSS of a Python worker"
    )
    p.add_argument(
        "--kill-rss-gb", type=float, default=6.0, help="kill the run when a worker's RSS passes this"
    )
    p.add_argument("--timeout", type=float, default=7200, help="kill the CLI after this many seconds")
    p.add_argument(
        "--triage",
        choices=("auto", "always", "never", "only"),
        default="auto",
        help="per-file check without Spark: auto = when the CLI fails",
    )
    p.add_argument("--triage-workers", type=int, default=2)
    p.add_argument("--triage-file-timeout", type=float, default=300)
    p.add_argument(
        "--cli-arg", action="append", default=[], metavar="ARG", help="extra argument for `medimg ingest`"
    )
    p.add_argument("--clean", action="store_true", help="delete WORK/corpus and WORK/out after the checks")
    p.add_argument("--triage-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.ops.split(",")) - set(ALL_OPS)
    if unknown:
        p.error(f"unknown operators {sorted(unknown)}; choose from {', '.join(ALL_OPS)}")
    return args


def _print_failures(name: str, failures: list[dict[str, Any]], limit: int = 15) -> None:
    for f in failures[:limit]:
        where = f.get("path", "")
        origin = f" [{f['op']} of {f['seed']}: {f['variant']}; name {f['name_style']!r}]" if "op" in f else ""
        extra = f" quarantine={f['quarantine']}" if f.get("quarantine") else ""
        print(f"    - {where!r}{origin}: {f['detail']}{extra}")
    if len(failures) > limit:
        print(f"    ... and {len(failures) - limit} more (see the report)")


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, run the CLI, check the properties, write the report; 0 when all hold."""
    args = parse_args(argv)
    if args.triage_worker:
        return triage_worker(args.triage_worker)
    sys.setrecursionlimit(20000)
    work = (Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medimg-fuzz-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus, out = work / "corpus", work / "out"
    for d in (corpus, out):
        if d.exists():
            shutil.rmtree(d)
    report_path = Path(args.report) if args.report else work / "fuzz_report.json"
    ops = args.ops.split(",")

    t0 = time.perf_counter()
    entries, seeds = build_corpus(corpus, args.n, args.seed, ops, args.skip, args.bomb_scale)
    build_s = time.perf_counter() - t0
    (work / "manifest.json").write_text(
        json.dumps({"seed": args.seed, "n": args.n, "ops": ops, "files": entries}, indent=1)
    )
    print(f"corpus: {len(entries)} files from {len(seeds)} seeds in {build_s:.1f} s → {corpus}")
    print(
        "  by operator: "
        + ", ".join(f"{k}={v}" for k, v in collections.Counter(e["op"] for e in entries).most_common())
    )

    report: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k != "triage_worker"},
        "work": str(work),
        "corpus": {
            "files": len(entries),
            "seeds": [s.name for s in seeds],
            "by_op": dict(collections.Counter(e["op"] for e in entries).most_common()),
            "by_seed_format": dict(
                collections.Counter(e["seed"].split("/")[0] for e in entries).most_common()
            ),
            "odd_names": sum(1 for e in entries if e["name_style"] != "plain"),
            "bytes": sum(e["size"] for e in entries),
            "build_s": round(build_s, 1),
        },
        "properties": {},
    }
    props: dict[str, dict[str, Any]] = report["properties"]
    run: dict[str, Any] | None = None
    if args.triage != "only":
        print(
            f"running: medimg ingest {corpus} --out {out} --key-file … --vault … --json --master {args.master}"
        )
        run = run_cli(corpus, out, work, args.master, args.timeout, args.kill_rss_gb, args.cli_arg)
        report["run"] = {k: v for k, v in run.items() if k not in ("stdout", "stderr")}
        report["run"]["stderr_tail"] = (
            run["stderr"].decode("utf-8", "replace")[-6000:] if run["exit_code"] != 0 else ""
        )
        ok = run["exit_code"] == 0 and not run["killed"]
        detail = f"exit code {run['exit_code']}" + (f"; killed: {run['killed']}" if run["killed"] else "")
        props["exit_code"] = {
            "ok": ok,
            "failures": []
            if ok
            else [{"property": "exit_code", "detail": detail + " | " + _error_lines(run["stderr"])}],
        }
        names = {s.name for s in seeds}
        wrapped = {s.name: s.inner.name for s in seeds if s.inner is not None and s.inner.name in names}
        originals = path_originals(run["vault"], run["vault_key"])
        results, tallies = account(entries, corpus, out, run["summary"], wrapped, originals)
        props.update(results)
        report.update(tallies)
        peaks = run["peak_rss_gib"]
        rss_ok = peaks["worker"] <= args.max_worker_rss_gb
        props["worker_rss"] = {
            "ok": rss_ok,
            "limit_gib": args.max_worker_rss_gb,
            "worker_peak_gib": peaks["worker"],
            "jvm_peak_gib": peaks["jvm"],
            "driver_peak_gib": peaks["driver"],
            "failures": []
            if rss_ok
            else [
                {
                    "property": "worker_rss",
                    "detail": f"a Python worker peaked at {peaks['worker']:.2f} GiB "
                    f"> {args.max_worker_rss_gb} GiB",
                }
            ],
        }
        blobs = output_blobs(out, run["stdout"], run["stderr"])
        props["no_phi"] = check_phi(phi_values(entries, seeds), blobs, out, entries, corpus)
    if (
        args.triage == "only"
        or args.triage == "always"
        or (args.triage == "auto" and run is not None and not props["exit_code"]["ok"])
    ):
        print(f"triage: per-file ingest core on {len(entries)} files ({args.triage_workers} workers)...")
        report["triage"] = triage(
            entries,
            corpus,
            work,
            args.triage_workers,
            args.kill_rss_gb,
            args.max_worker_rss_gb,
            args.triage_file_timeout,
        )
        props["triage_clean"] = {
            "ok": report["triage"]["ok"],
            "failures": [
                {
                    "property": "triage",
                    "path": f["path"],
                    "op": f["op"],
                    "seed": f["seed"],
                    "variant": f["variant"],
                    "name_style": f["name_style"],
                    "detail": " | ".join(f["problems"]),
                    "quarantine": f["quarantine"],
                }
                for f in report["triage"]["findings"]
            ],
        }

    if run is not None:  # how every file ended, to diff two runs
        (work / "outcomes.json").write_text(
            json.dumps(
                [
                    {k: e[k] for k in ("path", "op", "seed", "variant", "name_style")}
                    | {"end": _signature(e)}
                    for e in entries
                ],
                indent=0,
            )
        )
    for e in entries:  # JSON-friendly
        e.pop("frames", None)
    failed = [name for name, p in props.items() if not p["ok"]]
    report["ok"] = not failed
    report["failed_properties"] = failed
    report["failures_by_origin"] = _by_origin(props)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, default=str))

    print()
    if run is not None:
        print(
            f"ingest: exit {run['exit_code']}{' (killed: ' + run['killed'] + ')' if run['killed'] else ''}, wall {run['wall_s']} s"
        )
        print(
            f"peak RSS GiB: worker {run['peak_rss_gib']['worker']}, all workers {run['peak_rss_gib']['workers_total']}, JVM {run['peak_rss_gib']['jvm']}, driver {run['peak_rss_gib']['driver']}"
        )
        print("outcomes: " + ", ".join(f"{k}={v}" for k, v in report.get("outcomes", {}).items()))
        print("quarantine (stage, error_class):")
        for h in report.get("quarantine_histogram", [])[:30]:
            print(f"    {h['n']:6d}  {h['stage']:<7} {h['error_class']}")
    if "triage" in report:
        tr = report["triage"]
        print(
            f"triage: {tr['files']} files in {tr['wall_s']} s, {len(tr['findings'])} findings, max per-file peak RSS {tr['max_peak_rss_gib']} GiB"
        )
    print("properties:")
    for name, p in props.items():
        extra = f" ({len(p['failures'])} failures)" if not p["ok"] else ""
        print(f"  {'PASS' if p['ok'] else 'FAIL'}  {name}{extra}")
        if not p["ok"]:
            _print_failures(name, p["failures"])
    if report["failures_by_origin"]:
        print("failures by property, operator, seed format:")
        for g in report["failures_by_origin"][:25]:
            print(f"  {g['n']:5d}  {g['property']:<21} {g['op']:<15} {g['format']:<7} {g['kind']}")
    print(f"report: {report_path}")
    if args.clean:
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    return 0 if not failed else 1


def _error_lines(stderr: bytes, limit: int = 6) -> str:
    """The most telling lines of the CLI's stderr (errors and exceptions)."""
    lines = stderr.decode("utf-8", "replace").splitlines()
    keys = ("Error", "Exception", "error:", "Caused by")
    picked = [ln.strip() for ln in lines if any(k in ln for k in keys) and "WARN" not in ln]
    return " || ".join(dict.fromkeys(picked[-limit:]))[:3000] or "\n".join(lines[-5:])[:2000]


def _by_origin(props: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Failures grouped by (property, operator, seed format, detail kind): the short list to read first."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = collections.defaultdict(list)
    for name, p in props.items():
        for f in p.get("failures", []):
            kind = re.sub(r"'[^']*'", "'…'", str(f.get("detail", "")))  # values, paths and numbers vary
            kind = re.sub(r"part-[^ \]]+", "part-*", kind)
            kind = re.sub(r"\d+", "N", kind).split(" | ")[0].split("\n")[0]
            if name in ("triage_clean", "controls_consistent", "exit_code"):
                kind = re.split(r"[:;]", kind)[0]
            kind = kind[:90]
            key = (name, str(f.get("op", "-")), str(f.get("seed", "-")).split("/")[0], kind)
            groups[key].append(f)
    out = []
    for (prop, op, fmt, kind), fs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append({"property": prop, "op": op, "format": fmt, "kind": kind, "n": len(fs), "example": fs[0]})
    return out


if __name__ == "__main__":
    sys.exit(main())
