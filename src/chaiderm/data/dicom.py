"""DICOM dermoscopy: images of the Dermoscopic Photography and VL Photographic image storage classes, read
as RGB with the metadata their tags carry. Other DICOM classes (CT, MR, ...) and malformed files are
refused by name: a scan decoded as a skin photograph would be silently wrong evidence."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from chaiderm.errors import DataError

ACCEPTED = {
    "1.2.840.10008.5.1.4.1.1.77.1.7": "Dermoscopic Photography Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
}
_SEX = {"F": "female", "M": "male", "O": "other"}


def is_dicom(src: str | Path | bytes) -> bool:
    """Part-10 files carry 'DICM' after a 128-byte preamble."""
    if isinstance(src, bytes | bytearray):
        return src[128:132] == b"DICM"
    try:
        with open(src, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _read(src: str | Path | bytes, name: str, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            io.BytesIO(src) if isinstance(src, bytes | bytearray) else src, stop_before_pixels=not pixels
        )
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(name, f"malformed DICOM file ({e})", code="corrupt") from None
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop not in ACCEPTED:
        raise DataError(
            name,
            f"DICOM class {sop or 'missing'} is not a dermoscopic image; accepted: {', '.join(ACCEPTED.values())}",
            code="not_image",
        )
    return ds


def dicom_metadata(src: str | Path | bytes, name: str | None = None) -> dict[str, str]:
    """Patient id, lesion number, sex, age and anatomic site from the tags (``data.records.METADATA_ALIASES``
    names); the lesion number (0018,3105) is read as the lesion id."""
    ds = _read(src, name or str(src), pixels=False)
    out: dict[str, str] = {}
    if getattr(ds, "PatientID", ""):
        out["patient_id"] = str(ds.PatientID)
    if getattr(ds, "LesionNumber", None) not in (None, ""):
        out["lesion_id"] = f"{out.get('patient_id', '')}/{ds.LesionNumber}".lstrip("/")
    if str(getattr(ds, "PatientSex", "")) in _SEX:
        out["sex"] = _SEX[str(ds.PatientSex)]
    age = str(getattr(ds, "PatientAge", ""))  # "055Y"
    if len(age) == 4 and age[:3].isdigit() and age[3] == "Y":
        out["age"] = str(int(age[:3]))
    region = getattr(ds, "AnatomicRegionSequence", None)
    if region and getattr(region[0], "CodeMeaning", ""):
        out["site"] = str(region[0].CodeMeaning)
    return out


def read_dicom(src: str | Path | bytes, name: str, *, max_pixels: int) -> np.ndarray:
    """The image as ``(H, W, 3)`` uint8 RGB; its size is checked from the header before decoding."""
    ds = _read(src, name, pixels=True)
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    if rows * cols == 0:
        raise DataError(name, "DICOM image has no rows or columns", code="corrupt")
    if rows * cols > max_pixels:
        raise DataError(name, f"image is {cols}x{rows}, over the {max_pixels:,} pixel limit; refused", code="too_large")
    if int(getattr(ds, "NumberOfFrames", 1) or 1) != 1:
        raise DataError(name, "multi-frame DICOM: one photograph per file is expected", code="invalid")
    try:
        a = ds.pixel_array
    except Exception as e:  # compressed syntaxes without a decoder, truncated pixel data, ...
        raise DataError(name, f"cannot decode the DICOM pixel data ({e})", code="corrupt") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric.startswith("YBR"):
        from pydicom.pixels import convert_color_space

        a = convert_color_space(a, photometric, "RGB")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.dtype != np.uint8:  # 16-bit photographs: stretched by their own range, as PNGs are
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])
