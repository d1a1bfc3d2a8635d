"""DICOM reader: pydicom with the pylibjpeg (libjpeg, openjpeg, rle) and gdcm plugins."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from medimg_spark.errors import TruncatedFileError
from medimg_spark.io.detect import DICOM_RESYNC_WINDOW, looks_like_dicom_element
from medimg_spark.io.model import Frame, ParsedFile

#: Binary values longer than this are left out of ``header_json`` (bulk data).
BULK_DATA_THRESHOLD = 1024

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ENCODINGS = ((True, True), (False, True), (False, False))  # (implicit VR, little endian)


def _read_raw(data: bytes, offset: int, implicit: bool, little: bool) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    ds = read_dataset(io.BytesIO(data[offset:]), is_implicit_VR=implicit, is_little_endian=little)
    fds = FileDataset(
        "", ds, preamble=None, file_meta=FileMetaDataset(), is_implicit_VR=implicit, is_little_endian=little
    )
    return fds


def _element_count(ds: Any) -> int:
    return sum(1 for _ in ds)


def _read_without_preamble(data: bytes, recovered: list[str]) -> tuple[Any, int]:
    """Read a dataset without preamble/file meta: try each encoding at each plausible start offset."""
    best: tuple[int, Any, int, tuple[bool, bool]] | None = None
    for offset in range(min(DICOM_RESYNC_WINDOW, len(data))):
        if not looks_like_dicom_element(data, offset):
            continue
        for implicit, little in _ENCODINGS:
            try:
                ds = _read_raw(data, offset, implicit, little)
                # Touch every value so a wrong encoding fails here rather than later.
                for elem in ds.iterall():
                    _ = elem.value
            except Exception:
                continue
            n = _element_count(ds)
            if best is None or n > best[0]:
                best = (n, ds, offset, (implicit, little))
        if best is not None and best[0] > 1:
            break
    if best is None:
        from pydicom.errors import InvalidDicomError

        raise InvalidDicomError("no readable DICOM data elements found at the start of the file")
    _, ds, offset, (implicit, little) = best
    recovered.append("no_preamble")
    if offset:
        recovered.append(f"skipped_{offset}_leading_bytes")
    # File meta elements (group 0002) read as part of the dataset belong in file_meta.
    for tag in [t for t in list(ds.keys()) if t.group == 0x0002]:
        ds.file_meta[tag] = ds[tag]
        del ds[tag]
    if not ds.file_meta.get("TransferSyntaxUID"):
        ds.file_meta.TransferSyntaxUID = _uncompressed_syntax(implicit, little)
        recovered.append("inferred_transfer_syntax")
    return ds, offset


def _uncompressed_syntax(implicit: bool, little: bool) -> Any:
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _infer_encapsulated_syntax(ds: Any) -> Any | None:
    """Guess the transfer syntax of encapsulated pixel data from the first fragment's codestream."""
    from pydicom import uid
    from pydicom.encaps import generate_fragments

    try:
        fragment = next(generate_fragments(ds.PixelData))
    except Exception:
        return None
    if fragment.startswith(b"\xff\x4f\xff\x51") or fragment[4:8] == b"jP  ":
        return uid.JPEG2000
    if fragment.startswith(b"\xff\xd8"):
        marker = fragment[2:]
        # Find the SOF marker to tell the JPEG process apart.
        i = 0
        while i + 4 <= len(marker):
            if marker[i] != 0xFF:
                break
            code = marker[i + 1]
            if code in (0xC0,):
                return uid.JPEGBaseline8Bit
            if code in (0xC1, 0xC2):
                return uid.JPEGExtended12Bit
            if code == 0xC3:
                return uid.JPEGLosslessSV1
            if code == 0xF7:
                return uid.JPEGLSLossless
            seg_len = int.from_bytes(marker[i + 2 : i + 4], "big")
            i += 2 + seg_len
        return uid.JPEGBaseline8Bit
    return uid.RLELossless if len(fragment) >= 64 and int.from_bytes(fragment[:4], "little") <= 15 else None


def read_dataset_bytes(data: bytes) -> tuple[Any, list[str]]:
    """Parse DICOM bytes into a pydicom dataset, repairing what can be repaired.

    Returns:
        ``(dataset, recovered)`` where ``recovered`` lists the repairs applied.

    Raises:
        pydicom.errors.InvalidDicomError: or another parse error when nothing readable remains.
    """
    import pydicom

    recovered: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(data) >= 132 and data[128:132] == b"DICM":
            ds = pydicom.dcmread(io.BytesIO(data))
            start = 0
        else:
            ds, start = _read_without_preamble(data, recovered)
        object.__setattr__(ds, "_medimg_source", data[start:])
        try:
            check_complete(ds, len(data), start)
        finally:
            object.__delattr__(ds, "_medimg_source")
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is None or not str(ts):
            if any(k in ds for k in _PIXEL_KEYWORDS) and "PixelData" in ds and _is_encapsulated(ds):
                inferred = _infer_encapsulated_syntax(ds)
                if inferred is not None:
                    ds.file_meta.TransferSyntaxUID = inferred
                    recovered.append("inferred_transfer_syntax")
            else:
                implicit, little = getattr(ds, "original_encoding", (True, True))
                ds.file_meta.TransferSyntaxUID = _uncompressed_syntax(
                    bool(implicit) if implicit is not None else True,
                    bool(little) if little is not None else True,
                )
                recovered.append("inferred_transfer_syntax")
    return ds, recovered


def check_complete(ds: Any, total: int, start: int = 0) -> None:
    """Raise :class:`TruncatedFileError` when the file ends before its declared content.

    Two signs: a top-level element whose value is shorter than its declared length, or bytes left
    after the last element that are neither zero padding nor a whole element.
    """
    end = start
    for elem in ds._dict.values():
        length = getattr(elem, "length", None)
        tell = getattr(elem, "value_tell", None)
        value = getattr(elem, "value", None)
        if length is None or tell is None or length == 0xFFFFFFFF:
            end = -1  # undefined length: the end is not known from the header alone
            continue
        if isinstance(value, bytes | bytearray) and len(value) < length:
            raise TruncatedFileError(
                f"element {elem.tag} declares {length} bytes but the file ends after {len(value)}; "
                "the file is truncated, re-export or re-transfer it"
            )
        end = tell + length
    if end > 0:
        rest = total - end
        if rest > 0 and any(b != 0 for b in _tail(ds, end - start)):
            raise TruncatedFileError(
                f"{rest} trailing bytes after the last complete element at offset {end}: the next element "
                "is cut short; the file is truncated, re-export or re-transfer it"
            )


def _tail(ds: Any, offset: int) -> bytes:
    data: bytes = getattr(ds, "_medimg_source", b"")
    return data[offset:]


def _is_encapsulated(ds: Any) -> bool:
    elem = ds["PixelData"]
    return bool(getattr(elem, "is_undefined_length", False))


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or (
            hasattr(value, "__len__") and not isinstance(value, str | bytes)
        ):
            value = value[0] if len(value) else None
            if value is None:
                return None
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    try:
        seq = list(value) if not isinstance(value, str | bytes | int | float) else [value]
        return [float(v) for v in seq]
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s or None


def _get(ds: Any, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:
        return None


def header_json(ds: Any) -> str:
    """The header (file meta + dataset) as DICOM JSON, bulk data and invalid values left out."""

    def bulk(elem: Any) -> str:
        return f"omitted:{elem.tag:08X}"

    out: dict[str, Any] = {}
    for part in (ds.file_meta, ds):
        try:
            out.update(
                part.to_json_dict(
                    bulk_data_threshold=BULK_DATA_THRESHOLD,
                    bulk_data_element_handler=bulk,
                    suppress_invalid_tags=True,
                )
            )
        except Exception:
            for elem in list(part):
                try:
                    from pydicom.dataset import Dataset

                    out.update(
                        Dataset({elem.tag: elem}).to_json_dict(
                            bulk_data_threshold=BULK_DATA_THRESHOLD, bulk_data_element_handler=bulk
                        )
                    )
                except Exception:
                    continue
    return json.dumps(out, sort_keys=True, ensure_ascii=False)


def _frame_geometry(ds: Any, n_frames: int) -> list[dict[str, Any]]:
    """Per-frame position and spacing from enhanced multi-frame functional groups, when present."""
    out: list[dict[str, Any]] = [{} for _ in range(n_frames)]
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        return out
    for i, item in enumerate(per_frame):
        if i >= n_frames:
            break
        pos = _get(item, "PlanePositionSequence")
        if pos:
            out[i]["image_position"] = _floats(_get(pos[0], "ImagePositionPatient"))
    return out


def _shared_spacing(ds: Any) -> list[float] | None:
    spacing = _floats(_get(ds, "PixelSpacing")) or _floats(_get(ds, "ImagerPixelSpacing"))
    if spacing:
        return spacing
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    if shared:
        measures = _get(shared[0], "PixelMeasuresSequence")
        if measures:
            return _floats(_get(measures[0], "PixelSpacing"))
    return None


def stored_photometric(ds: Any, channels: int) -> str | None:
    """Photometric interpretation of the array ``pixel_array`` returns (pydicom converts YBR to RGB)."""
    pi = _str(_get(ds, "PhotometricInterpretation"))
    if pi and pi.startswith("YBR") and channels == 3:
        return "RGB"
    return pi


def parse_dicom(data: bytes, deidentify: Callable[[Any], Any] | None = None) -> ParsedFile:
    """Parse DICOM bytes; pixels decode lazily through :attr:`ParsedFile.decode`.

    Args:
        data: the file's bytes.
        deidentify: applied to the dataset before any metadata is extracted.
    """
    ds, recovered = read_dataset_bytes(data)
    if deidentify is not None:
        try:
            ds = deidentify(ds)
        except Exception as exc:
            exc.medimg_stage = "deid"  # type: ignore[attr-defined]
            raise
    has_pixels = any(k in ds for k in _PIXEL_KEYWORDS)
    n_frames = (_int(_get(ds, "NumberOfFrames")) or 1) if has_pixels else 0
    modality = _str(_get(ds, "Modality")) or "OT"
    sop_class = _str(_get(ds, "SOPClassUID")) or _str(ds.file_meta.get("MediaStorageSOPClassUID"))
    image_meta: dict[str, Any] = {
        "bits_stored": _int(_get(ds, "BitsStored")),
        "rescale_slope": _first_float(_get(ds, "RescaleSlope")),
        "rescale_intercept": _first_float(_get(ds, "RescaleIntercept")),
        "window_center": _first_float(_get(ds, "WindowCenter")),
        "window_width": _first_float(_get(ds, "WindowWidth")),
        "pixel_spacing": _shared_spacing(ds),
        "slice_thickness": _first_float(_get(ds, "SliceThickness")),
        "patient_id": _str(_get(ds, "PatientID")),
        "study_instance_uid": _str(_get(ds, "StudyInstanceUID")),
        "series_instance_uid": _str(_get(ds, "SeriesInstanceUID")),
        "sop_instance_uid": _str(_get(ds, "SOPInstanceUID")),
        "instance_number": _int(_get(ds, "InstanceNumber")),
        "image_position": _floats(_get(ds, "ImagePositionPatient")),
    }
    instance_meta = {
        "sop_class_uid": sop_class,
        "transfer_syntax_uid": _str(ds.file_meta.get("TransferSyntaxUID")),
        "patient_id": image_meta["patient_id"],
        "study_instance_uid": image_meta["study_instance_uid"],
        "series_instance_uid": image_meta["series_instance_uid"],
        "sop_instance_uid": image_meta["sop_instance_uid"],
        "header_json": header_json(ds),
    }

    def decode() -> Iterator[Frame]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
        samples = _int(_get(ds, "SamplesPerPixel")) or 1
        frames = arr if n_frames > 1 else arr[np.newaxis, ...]
        expected_ndim = 4 if samples > 1 else 3
        if frames.ndim != expected_ndim:
            raise ValueError(
                f"decoded array has shape {arr.shape}, which does not match NumberOfFrames={n_frames} "
                f"and SamplesPerPixel={samples}"
            )
        geometry = _frame_geometry(ds, len(frames))
        photometric = stored_photometric(ds, samples)
        for i, frame in enumerate(frames):
            meta = {k: v for k, v in geometry[i].items() if v is not None}
            meta["photometric"] = photometric
            yield Frame(i, frame, meta)

    return ParsedFile(
        source_format="dicom",
        modality=modality,
        has_pixels=has_pixels,
        n_frames=n_frames,
        image_meta=image_meta,
        instance_meta=instance_meta,
        recovered=recovered,
        decode=decode if has_pixels else None,
    )
