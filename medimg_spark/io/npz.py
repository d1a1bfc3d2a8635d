"""MedMNIST ``.npz`` files: ``{train,val,test}_images`` with ``{split}_labels``, any subset of splits."""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Iterator

import numpy as np

from medimg_spark.errors import ImageTooLargeError, InvalidHeaderError, NoPixelDataError
from medimg_spark.io.model import Frame, ParsedFile

_IMAGES = re.compile(r"^(?P<split>[A-Za-z0-9]+)_images$")


def _label_str(label: np.ndarray) -> str:
    flat = np.asarray(label).ravel()
    return ",".join(str(int(v)) if float(v).is_integer() else str(float(v)) for v in flat)


def check_members(data: bytes, max_decompressed_bytes: int | None, max_decoded_bytes: int | None) -> None:
    """Bound an ``.npz`` before loading it: the members' declared sizes and array headers.

    A zip member is inflated only up to its declared size, so summing those bounds the memory that
    loading takes (a 1 MB archive can declare 1 GiB of zeros). Each ``.npy`` header is read too.

    Raises:
        ImageTooLargeError: the members would inflate past either limit.
        InvalidHeaderError: a member is not a readable ``.npy`` array header.
    """
    total = decoded = 0
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            total += info.file_size
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
            except Exception as exc:
                raise InvalidHeaderError(
                    f"npz member {info.filename!r} has no readable .npy header ({type(exc).__name__}); "
                    "re-save the archive with numpy.savez"
                ) from None
            decoded += math.prod(shape) * np.dtype(dtype).itemsize
    if max_decompressed_bytes is not None and total > max_decompressed_bytes:
        raise ImageTooLargeError(
            f"npz members inflate to {total} bytes, over ingest.max_decompressed_bytes = "
            f"{max_decompressed_bytes}; raise the limit or split the archive"
        )
    if max_decoded_bytes is not None and decoded > max_decoded_bytes:
        raise ImageTooLargeError(
            f"npz arrays need {decoded} bytes, over ingest.max_decoded_bytes = {max_decoded_bytes}; "
            "raise the limit (and the worker memory) or split the archive"
        )


def parse_npz(
    data: bytes,
    modality: str,
    max_decompressed_bytes: int | None = None,
    max_decoded_bytes: int | None = None,
) -> ParsedFile:
    """Parse a MedMNIST npz: every image of every split becomes one frame, in file order.

    ``label`` is the label array of the image as a string (``"1"``, or ``"0,1,0"`` for multi-label),
    ``split`` the split name. Arrays are (N, H, W) or (N, H, W, C); 3-D MedMNIST volumes (N, D, H, W)
    become D frames per item.
    """
    check_members(data, max_decompressed_bytes, max_decoded_bytes)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    splits = [m.group("split") for k in arrays if (m := _IMAGES.match(k))]
    order = {"train": 0, "val": 1, "test": 2}
    splits.sort(key=lambda s: (order.get(s, 3), s))
    if not splits:
        raise NoPixelDataError(f"npz holds no '<split>_images' array (arrays: {sorted(arrays)})")
    counts = {}
    for s in splits:
        imgs = arrays[f"{s}_images"]
        labels = arrays.get(f"{s}_labels")
        if labels is not None and len(labels) != len(imgs):
            raise ValueError(f"{s}_labels has {len(labels)} rows but {s}_images has {len(imgs)}")
        counts[s] = len(imgs)
    first = arrays[f"{splits[0]}_images"]
    volumetric = first.ndim == 4 and first.shape[-1] not in (1, 3, 4)
    per_item = first.shape[1] if volumetric else 1
    n_frames = sum(counts.values()) * per_item

    def decode() -> Iterator[Frame]:
        index = 0
        for s in splits:
            imgs = arrays[f"{s}_images"]
            labels = arrays.get(f"{s}_labels")
            for i in range(len(imgs)):
                label = _label_str(labels[i]) if labels is not None else None
                item = imgs[i]
                frames = item if volumetric else item[np.newaxis, ...]
                for frame in frames:
                    channels = 1 if frame.ndim == 2 else frame.shape[2]
                    photometric = "MONOCHROME2" if channels == 1 else "RGB"
                    yield Frame(
                        index,
                        frame,
                        {"label": label, "split": s, "photometric": photometric, "instance_number": i},
                    )
                    index += 1

    return ParsedFile(
        source_format="npz",
        modality=modality,
        has_pixels=True,
        n_frames=n_frames,
        image_meta={"bits_stored": int(first.dtype.itemsize * 8)},
        instance_meta={
            "header_json": json.dumps(
                {"splits": counts, "shape": list(first.shape[1:]), "dtype": first.dtype.name}
            )
        },
        decode=decode,
    )
