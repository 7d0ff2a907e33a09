"""Chest radiographs in and out of DICOM.

Reading (:func:`read_radiograph`) turns a CR/DX chest radiograph into the image the model sees:
float32 in [0, 1], air and lungs dark, bone bright (the usual display). The steps follow the
DICOM grayscale pipeline (PS3.3 C.11): stored values (Bits Stored respected) -> Modality LUT or
Rescale Slope/Intercept -> VOI LUT or Window Center/Width (else a robust 0.5-99.5 percentile
window) -> MONOCHROME1 inverted. Compressed transfer syntaxes (JPEG 2000, RLE Lossless, JPEG)
go through pydicom's decoders (pylibjpeg, Pillow). Anything that is not a single-frame
monochrome CR/DX (or secondary-capture) chest image is refused with a :class:`DicomError` that
names what was found: a chest CT is not a radiograph.

Writing (:func:`write_radiograph_dicom`, :func:`export_pair_as_dicom`) stores simulated studies
as DX, PA view, MONOCHROME2, with fresh UIDs; StudyDate carries the longitudinal order. Files
are written atomically (temporary name in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ..files import atomic_write

DX_FOR_PRESENTATION = UID(
    "1.2.840.10008.5.1.4.1.1.1.1"
)  # Digital X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE_MODALITIES = frozenset({"OT", "SC"})
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})
# BodyPartExamined values that mean "chest"; an empty or absent value is accepted too.
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
PERCENTILE_WINDOW = (0.5, 99.5)


class DicomError(ValueError):
    """A DICOM file that cannot be used: unreadable, corrupt, or not a chest radiograph."""


class DicomFileNotFoundError(DicomError, FileNotFoundError):
    """The DICOM file does not exist (both a DicomError and a FileNotFoundError)."""


@dataclass
class DicomImage:
    """A chest radiograph read from DICOM, ready for the model.

    ``pixels`` is float32 in [0, 1] with lungs dark. When a ``size`` was asked for, the image is
    resized keeping its aspect ratio and padded with black to ``size x size``; ``content_box``
    (top, left, height, width) says where the radiograph lies inside ``pixels``.
    """

    pixels: np.ndarray
    source: str
    original_shape: tuple[int, int]
    content_box: tuple[int, int, int, int]
    modality: str
    photometric_interpretation: str
    transfer_syntax: str
    transfer_syntax_name: str
    bits_stored: int
    voi: str  # "VOI LUT", "window" or "percentile": how stored values became gray levels
    window: tuple[float, float] | None  # (center, width) used, when a window was used
    view_position: str = ""
    body_part: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_instance_uid: str = ""
    sop_instance_uid: str = ""
    pixel_spacing: tuple[float, float] | None = None
    stored: np.ndarray | None = field(default=None, repr=False)  # raw stored values (keep_stored)


# --------------------------------------------------------------------------------------------
# Reading


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a DICOM file (Part 10, with the 'DICM' marker) or raise a DicomError naming it.

    pydicom stops silently (or with a warning) at a truncated element; a truncation warning is
    turned into an error here, and a missing Pixel Data element is reported by the reader.
    """
    path = Path(path)
    if not path.exists():
        raise DicomFileNotFoundError(f"{path}: no such DICOM file")
    if path.is_dir():
        raise DicomError(f"{path}: is a folder, not a DICOM file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise DicomError(f"{path}: not a DICOM file ({err})") from err
    except Exception as err:  # pydicom raises many kinds on damaged headers
        raise DicomError(f"{path}: corrupt DICOM ({type(err).__name__}: {err})") from err
    for warning in caught:
        message = str(warning.message)
        if message.startswith("End of file reached"):  # pydicom's words for a cut sequence
            raise DicomError(f"{path}: truncated DICOM file ({message})")
    return ds


def _source_name(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    return str(filename) if isinstance(filename, str | os.PathLike) else "<dataset>"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int_element(ds: Dataset, keyword: str, source: str) -> int:
    if keyword not in ds or ds[keyword].value in (None, ""):
        raise DicomError(f"{source}: missing {keyword}, cannot interpret the pixels")
    try:
        return int(ds[keyword].value)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{source}: invalid {keyword} {ds[keyword].value!r}") from err


def check_chest_radiograph(
    ds: Dataset,
    source: str | None = None,
    *,
    allow_secondary_capture: bool = True,
    require_chest: bool = True,
) -> None:
    """Raise a DicomError unless ``ds`` is a single-frame monochrome chest radiograph.

    Accepted: Modality CR or DX; OT/SC (a secondary capture, e.g. a digitised film) when
    ``allow_secondary_capture``. A BodyPartExamined other than chest is refused when
    ``require_chest`` (an absent or empty one is accepted: many files leave it out).
    """
    source = source or _source_name(ds)
    modality = _text(ds, "Modality").upper()
    accepted = set(RADIOGRAPH_MODALITIES)
    if allow_secondary_capture:
        accepted |= SECONDARY_CAPTURE_MODALITIES
    if modality not in accepted:
        found = f"modality {modality}" if modality else "no Modality element"
        raise DicomError(f"{source}: expected a CR/DX chest radiograph, got {found}")
    frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames or 1)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{source}: invalid NumberOfFrames {frames!r}") from err
    if frames != 1:
        raise DicomError(
            f"{source}: expected a single radiograph, got a multi-frame image ({frames} frames)"
        )
    photometric = _text(ds, "PhotometricInterpretation").upper()
    samples = ds.get("SamplesPerPixel", 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise DicomError(
            f"{source}: expected a monochrome radiograph, got PhotometricInterpretation "
            f"{photometric or 'missing'} with {samples} sample(s) per pixel"
        )
    body_part = _text(ds, "BodyPartExamined").upper()
    if require_chest and body_part and body_part not in CHEST_BODY_PARTS:
        raise DicomError(f"{source}: expected a chest radiograph, got BodyPartExamined {body_part}")


def decode_stored_values(ds: Dataset, source: str | None = None) -> np.ndarray:
    """The stored pixel values (before any LUT), decompressed, with only Bits Stored kept.

    Bits above Bits Stored may hold overlay or garbage data: pydicom 3 masks them off and
    sign-extends signed values from Bits Stored (tests/test_data_dicom.py checks both).
    """
    source = source or _source_name(ds)
    if "PixelData" not in ds:
        raise DicomError(f"{source}: no Pixel Data element (is the file truncated?)")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise DicomError(f"{source}: no Transfer Syntax UID in the file meta information")
    bits_allocated = _int_element(ds, "BitsAllocated", source)
    bits_stored = _int_element(ds, "BitsStored", source)
    _int_element(ds, "Rows", source)
    _int_element(ds, "Columns", source)
    if not 1 <= bits_stored <= bits_allocated <= 32:
        raise DicomError(
            f"{source}: inconsistent Bits Stored {bits_stored} / Bits Allocated {bits_allocated}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = ds.pixel_array
    except Exception as err:  # decoder errors come in many types
        raise DicomError(
            f"{source}: cannot decode the pixel data ({UID(syntax).name}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if values.ndim != 2:
        raise DicomError(f"{source}: expected a 2-D image, got pixel array shape {values.shape}")
    return values


def _modality_values(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values -> modality values (Modality LUT, else Rescale Slope/Intercept)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float64) * slope + intercept


def _first_number(value) -> float:
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0]
    return float(value)


def apply_window(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Window Center/Width to [0, 1], with the formulas of PS3.3 C.11.2.1.2."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    # LINEAR (the default): the -0.5 / (w - 1) terms map integer inputs to exact end points.
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _apply_voi_lut_sequence(ds: Dataset, values: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_voi_lut

    item = ds.VOILUTSequence[0]
    if np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # the LUT indexes integers; floats only after rescale
    out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
    descriptor_bits = int(item.LUTDescriptor[2])
    data = np.asarray(item.LUTData).ravel()
    # Some files state 16 bits for 8-bit LUT data; the data's own bit depth is the safer bound.
    data_bits = max(1, int(data.max()).bit_length()) if data.size else descriptor_bits
    top = float((1 << min(descriptor_bits, data_bits)) - 1)
    return np.clip(out / top, 0.0, 1.0)


def to_display(ds: Dataset, stored: np.ndarray) -> tuple[np.ndarray, str, tuple | None]:
    """Stored values -> float [0, 1] display values with lungs dark.

    Returns (image, voi, window): which VOI step was used and the (center, width) if a window.
    """
    values = _modality_values(ds, stored)
    image = None
    voi, window = "", None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        image, voi = _apply_voi_lut_sequence(ds, values), "VOI LUT"
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center = _first_number(ds.WindowCenter)
            width = _first_number(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center = width = float("nan")
        function = _text(ds, "VOILUTFunction") or "LINEAR"
        minimum_width = 1.0 if function.upper() == "LINEAR" else 0.0
        if np.isfinite(center) and np.isfinite(width) and width > minimum_width:
            image = apply_window(values, center, width, function)
            voi, window = "window", (center, width)
    if image is None:  # no (usable) VOI: a robust window that ignores a few extreme pixels
        low, high = np.percentile(values, PERCENTILE_WINDOW)
        if high > low:
            image = np.clip((values - low) / (high - low), 0.0, 1.0)
        else:
            image = np.zeros_like(values)
        voi, window = "percentile", (float((low + high) / 2), float(high - low))
    if _text(ds, "PhotometricInterpretation").upper() == "MONOCHROME1":
        image = 1.0 - image  # MONOCHROME1: low values are white; flip so air is dark
    return image.astype(np.float32), voi, window


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resize keeping the aspect ratio so the long side is ``size``, pad with black (0).

    Padding rather than cropping keeps the whole lung field (costophrenic angles and apices
    sit near the edges). Area averaging when shrinking, bicubic when enlarging.
    Returns the square image and the content box (top, left, height, width).
    """
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    rows, cols = image.shape
    scale = size / max(rows, cols)
    new_rows = max(1, min(size, round(rows * scale)))
    new_cols = max(1, min(size, round(cols * scale)))
    if (new_rows, new_cols) != (rows, cols):
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
        resized = Image.fromarray(image.astype(np.float32), mode="F").resize(
            (new_cols, new_rows), resample=resample
        )
        image = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    square = np.zeros((size, size), dtype=np.float32)
    square[top : top + new_rows, left : left + new_cols] = image
    return square, (top, left, new_rows, new_cols)


def read_radiograph(
    path_or_dataset: str | os.PathLike | Dataset,
    size: int | None = None,
    *,
    allow_secondary_capture: bool = True,
    require_chest: bool = True,
    keep_stored: bool = False,
) -> DicomImage:
    """Read a CR/DX chest radiograph into a float32 [0, 1] image with lungs dark.

    ``size``: resize (aspect kept) and pad with black to ``size x size``; None keeps the
    original pixel grid. ``keep_stored`` also returns the raw stored values. Raises a
    :class:`DicomError` (a ValueError) naming the file and the problem for a missing, corrupt
    or non-DICOM file, and for CT, MR, US, colour or multi-frame images.
    """
    if isinstance(path_or_dataset, Dataset):
        ds = path_or_dataset
        source = _source_name(ds)
    else:
        source = str(path_or_dataset)
        ds = load_dataset(path_or_dataset)
    if "PixelData" not in ds:  # before the header checks: a cut file also lacks Modality etc.
        raise DicomError(
            f"{source}: no Pixel Data element: the file is truncated or holds no image"
            f" (SOP class {UID(_text(ds, 'SOPClassUID')).name or 'missing'})"
        )
    check_chest_radiograph(
        ds, source, allow_secondary_capture=allow_secondary_capture, require_chest=require_chest
    )
    stored = decode_stored_values(ds, source)
    image, voi, window = to_display(ds, stored)
    original_shape = (int(image.shape[0]), int(image.shape[1]))
    if size is None:
        box = (0, 0, *original_shape)
    else:
        image, box = fit_square(image, size)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    try:
        pixel_spacing = (float(spacing[0]), float(spacing[1])) if spacing else None
    except (TypeError, ValueError, IndexError):
        pixel_spacing = None
    if pixel_spacing is not None and min(pixel_spacing) <= 0:
        pixel_spacing = None  # e.g. RG1 stores 0.000 \ 0.000: unknown, not zero
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    return DicomImage(
        pixels=image,
        source=source,
        original_shape=original_shape,
        content_box=box,
        modality=_text(ds, "Modality").upper(),
        photometric_interpretation=_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax=str(syntax),
        transfer_syntax_name=syntax.name,
        bits_stored=int(ds.BitsStored),
        voi=voi,
        window=window,
        view_position=_text(ds, "ViewPosition").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        patient_id=_text(ds, "PatientID"),
        study_date=_text(ds, "StudyDate"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        pixel_spacing=pixel_spacing,
        stored=stored if keep_stored else None,
    )


# --------------------------------------------------------------------------------------------
# Writing


def save_dataset_atomic(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as a DICOM Part 10 file via a temporary name in the same folder."""
    return atomic_write(
        path, lambda temporary: ds.save_as(temporary, enforce_file_format=True), suffix=".tmp"
    )


def _dicom_date(value: dt.date | str, what: str) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip().replace("-", "")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError as err:
        raise ValueError(f"{what} must be a date (YYYYMMDD or YYYY-MM-DD), got {value!r}") from err
    return text


def _dicom_time(value: dt.time | str, what: str) -> str:
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S")
    text = str(value).strip().replace(":", "")
    if not re.fullmatch(r"([01]\d|2[0-3])([0-5]\d)([0-5]\d)?", text):
        raise ValueError(f"{what} must be a time (HHMMSS or HH:MM:SS), got {value!r}")
    return text


def _stored_pixels(image: np.ndarray) -> tuple[np.ndarray, int]:
    """uint8 -> 8 bits; uint16 -> 16 bits; float in [0, 1] -> 16 bits (x * 65535, rounded)."""
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 1:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image, 8
    if image.dtype == np.uint16:
        return image, 16
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError("image contains NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"a float image must lie in [0, 1], got values in [{low}, {high}]")
        return np.round(image.astype(np.float64) * 65535.0).astype(np.uint16), 16
    raise ValueError(f"expected a uint8, uint16 or float [0, 1] image, got dtype {image.dtype}")


def build_radiograph_dataset(
    image: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    study_date: dt.date | str,
    study_time: dt.time | str = "120000",
    study_instance_uid: str | None = None,
    study_description: str = "Simulated chest radiograph",
    series_description: str = "Simulated PA chest radiograph (ProgEmu-Lite)",
    accession_number: str = "",
    patient_sex: str = "",
    image_comments: str | None = None,
) -> Dataset:
    """A DX For Presentation dataset (PA view, MONOCHROME2) holding ``image``; see
    :func:`write_radiograph_dicom`."""
    if not str(patient_id).strip():
        raise ValueError("patient_id must not be empty")
    if patient_sex not in ("", "M", "F", "O"):
        raise ValueError(f"patient_sex must be '', 'M', 'F' or 'O', got {patient_sex!r}")
    pixels, bits = _stored_pixels(image)
    date_text = _dicom_date(study_date, "study_date")
    time_text = _dicom_time(study_time, "study_time")
    sop_instance_uid = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names may hold any character
    ds.ImageType = ["DERIVED", "PRIMARY"]  # simulated, not acquired
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance_uid
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, date_text)
    for keyword in ("StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        setattr(ds, keyword, time_text)
    ds.AccessionNumber = accession_number
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "ProgEmu-Lite (simulation)"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = str(patient_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = patient_sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # PA display: patient's left on the viewer's right
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    if image_comments:
        ds.ImageComments = image_comments
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    # The identity window: with the LINEAR formula, center 2^(n-1) and width 2^n map stored
    # value v to exactly v / (2^n - 1), so read_radiograph gives back what was written.
    ds.WindowCenter = 1 << (bits - 1)
    ds.WindowWidth = 1 << bits
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels.astype(f"<u{bits // 8}")).tobytes()
    return ds


def write_radiograph_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    study_date: dt.date | str,
    study_time: dt.time | str = "120000",
    study_instance_uid: str | None = None,
    study_description: str = "Simulated chest radiograph",
    series_description: str = "Simulated PA chest radiograph (ProgEmu-Lite)",
    accession_number: str = "",
    patient_sex: str = "",
    image_comments: str | None = None,
) -> Path:
    """Write a simulated chest radiograph as a DX (PA, MONOCHROME2) DICOM file, atomically.

    ``image``: uint8 (stored as 8 bits), uint16 (16 bits) or float in [0, 1] (16 bits, rounded
    to x * 65535), with dark lungs. UIDs are fresh (``pydicom.uid.generate_uid``) unless a
    ``study_instance_uid`` groups several images into one study. ``read_radiograph`` gives back
    ``stored / (2**bits - 1)`` exactly. Returns the path written.
    """
    ds = build_radiograph_dataset(
        image,
        patient_id=patient_id,
        patient_name=patient_name,
        study_date=study_date,
        study_time=study_time,
        study_instance_uid=study_instance_uid,
        study_description=study_description,
        series_description=series_description,
        accession_number=accession_number,
        patient_sex=patient_sex,
        image_comments=image_comments,
    )
    return save_dataset_atomic(ds, path)


def export_pair_as_dicom(
    out_dir: str | os.PathLike,
    prior_img: np.ndarray,
    followup_img: np.ndarray,
    patient_id: str,
    interval_days: int,
    *,
    patient_name: str | None = None,
    prior_date: dt.date | str = dt.date(2020, 1, 6),
    prompt: str | None = None,
    interpretation: str | None = None,
    stem: str | None = None,
) -> tuple[Path, Path]:
    """Write a simulated prior/follow-up pair as two DX studies of one patient.

    The follow-up's StudyDate is ``interval_days`` after the prior's (0 means the same day,
    later in the day), so the longitudinal order survives in any PACS. The progression prompt
    and interpretation go in the follow-up's ImageComments. Files: ``<stem>_prior.dcm`` and
    ``<stem>_followup.dcm`` in ``out_dir`` (``stem`` defaults to the patient id); both are
    written before either appears, so a failure leaves neither.
    """
    if isinstance(interval_days, bool) or not isinstance(interval_days, int | np.integer):
        raise ValueError(f"interval_days must be a whole number of days, got {interval_days!r}")
    if interval_days < 0:
        raise ValueError(
            f"interval_days must be >= 0 (prior before follow-up), got {interval_days}"
        )
    prior_text = _dicom_date(prior_date, "prior_date")
    prior_day = dt.datetime.strptime(prior_text, "%Y%m%d").date()
    followup_day = prior_day + dt.timedelta(days=int(interval_days))
    stem = stem or re.sub(r"[^A-Za-z0-9._-]+", "_", str(patient_id)).strip("._") or "patient"
    name = patient_name if patient_name is not None else f"SIMULATED^{patient_id}"
    comments = "\n".join(
        text
        for text in (
            f"Progression prompt: {prompt}" if prompt else "",
            f"Interpretation: {interpretation}" if interpretation else "",
        )
        if text
    )
    prior = build_radiograph_dataset(
        prior_img,
        patient_id=patient_id,
        patient_name=name,
        study_date=prior_day,
        study_time="090000",
        study_description="Simulated chest radiograph (prior)",
    )
    followup = build_radiograph_dataset(
        followup_img,
        patient_id=patient_id,
        patient_name=name,
        study_date=followup_day,
        study_time="150000",
        study_description="Simulated chest radiograph (follow-up)",
        image_comments=comments or None,
    )
    out_dir = Path(out_dir)
    targets = (out_dir / f"{stem}_prior.dcm", out_dir / f"{stem}_followup.dcm")
    # Write both under temporary names first; publish them only when both succeeded.
    staged: list[Path] = []
    try:
        for ds, target in zip((prior, followup), targets, strict=True):
            staged.append(save_dataset_atomic(ds, target.with_name(f".{target.name}.staged")))
        for temporary, target in zip(staged, targets, strict=True):
            os.replace(temporary, target)
    except BaseException:
        for temporary in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
    return targets
