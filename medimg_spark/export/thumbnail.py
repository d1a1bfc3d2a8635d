"""8-bit thumbnails (PNG, JPEG) for quick looks: middle slice, windowed, bounded size.

Grey values are windowed in rescaled units (stored × slope + intercept): the row's window
centre/width when it has one and the pixels are the stored source pixels, else the
``percentiles`` range of the slice. Label maps map 0..max label to 0..255. Colour uint8 frames are
kept as they are. The longest side is at most ``thumbnail_size`` (area resampling; never enlarged).
The files carry no text chunks or EXIF.
"""

from __future__ import annotations

import io

import numpy as np

from medimg_spark.export.model import ExportContext, ExportedFile, ExportItem, UnsupportedPixelsError


def middle_slice(item: ExportItem) -> np.ndarray:
    """The slice shown: the middle one of a volume (the only one of a frame)."""
    voxels = item.volume.voxels
    return np.asarray(voxels[voxels.shape[0] // 2])


def to_uint8(item: ExportItem, context: ExportContext) -> np.ndarray:
    """The displayed slice as uint8 (rows, cols) or (rows, cols, 3).

    Raises:
        UnsupportedPixelsError: a channel count other than 1, 3 or 4, or no pixels.
    """
    image = middle_slice(item)
    if image.size == 0:
        raise UnsupportedPixelsError("the slice holds no pixels; nothing to draw")
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise UnsupportedPixelsError(
                f"a thumbnail shows grey or RGB(A) pixels, not {image.shape[2]} channels"
            )
        image = image[:, :, :3]
        if image.dtype == np.uint8:
            return np.ascontiguousarray(image)
    values = image.astype(np.float64)
    if item.label_map:
        top = float(values.max())
        return (
            (np.clip(values / top, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            if top > 0
            else (np.zeros(values.shape, dtype=np.uint8))
        )
    if not item.processed:
        values = values * (item.rescale_slope or 1.0) + (item.rescale_intercept or 0.0)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    if not item.processed and item.window_width and item.window_width > 0 and item.window_center is not None:
        low = item.window_center - item.window_width / 2.0
        high = item.window_center + item.window_width / 2.0
    else:
        low, high = (float(v) for v in np.percentile(finite, context.options.percentiles))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=low) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def thumbnail(item: ExportItem, context: ExportContext, fmt: str) -> bytes:
    """The encoded thumbnail (``fmt``: ``PNG`` or ``JPEG``)."""
    from PIL import Image

    pixels = to_uint8(item, context)
    img = Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L")
    size = context.options.thumbnail_size
    if max(img.size) > size:
        scale = size / max(img.size)
        img = img.resize(
            (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.Resampling.BOX
        )
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=context.options.jpeg_quality)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>.png``."""
    return [ExportedFile(f"{item.file_stem}.png", thumbnail(item, context, "PNG"))]


def write_jpeg(item: ExportItem, context: ExportContext) -> list[ExportedFile]:
    """``<id>.jpg``."""
    return [ExportedFile(f"{item.file_stem}.jpg", thumbnail(item, context, "JPEG"))]
