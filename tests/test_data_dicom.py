"""DICOM reading and writing on real files: pydicom-data's PA chest CR (uncompressed, JPEG 2000
lossless and lossy), pydicom's CT/MR/US/colour test files, and files written here."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from progemu_lite.data.dicom import (
    DX_FOR_PRESENTATION,
    DicomError,
    DicomFileNotFoundError,
    build_radiograph_dataset,
    export_pair_as_dicom,
    load_dataset,
    read_radiograph,
    save_dataset_atomic,
    write_radiograph_dicom,
)

RG1 = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_UNCI.dcm", "RG1_J2KI.dcm")


def pydicom_file(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it cannot download other files
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return path


@pytest.fixture(scope="module")
def rg1():
    """The four RG1 files read once per module (J2K decoding takes ~0.6 s each)."""
    return {name: read_radiograph(pydicom_file(name), keep_stored=True) for name in RG1}


@pytest.fixture()
def gradient16():
    rows, cols = 40, 52
    return (np.arange(rows * cols, dtype=np.uint32).reshape(rows, cols) * 31 % 65536).astype(
        np.uint16
    )


# ------------------------------------------------------------------------------------------
# The real chest radiograph


def test_all_four_rg1_files_open(rg1):
    syntaxes = {name: image.transfer_syntax_name for name, image in rg1.items()}
    assert syntaxes == {
        "RG1_UNCR.dcm": "Explicit VR Little Endian",
        "RG1_J2KR.dcm": "JPEG 2000 Image Compression (Lossless Only)",
        "RG1_UNCI.dcm": "Explicit VR Little Endian",
        "RG1_J2KI.dcm": "JPEG 2000 Image Compression",
    }
    for image in rg1.values():
        assert image.pixels.shape == image.original_shape == (1955, 1841)
        assert image.pixels.dtype == np.float32
        assert 0.0 <= image.pixels.min() < 0.2 and 0.9 < image.pixels.max() <= 1.0
        assert image.modality == "CR"
        assert image.photometric_interpretation == "MONOCHROME1"
        assert image.bits_stored == 15
        assert image.view_position == "PA" and image.body_part == "CHEST"
        assert image.voi == "window" and image.window == (15000.0, 30000.0)
        assert image.pixel_spacing is None  # the file says 0.000 \ 0.000: unknown


def test_jpeg2000_gives_exactly_the_uncompressed_twin(rg1):
    for compressed, uncompressed in (
        ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
        ("RG1_J2KI.dcm", "RG1_UNCI.dcm"),
    ):
        np.testing.assert_array_equal(rg1[compressed].stored, rg1[uncompressed].stored)
        np.testing.assert_array_equal(rg1[compressed].pixels, rg1[uncompressed].pixels)
    # The two pairs really differ (lossy vs lossless), so the equality above means something.
    assert not np.array_equal(rg1["RG1_UNCR.dcm"].stored, rg1["RG1_UNCI.dcm"].stored)


def test_lungs_come_out_dark(rg1):
    image = rg1["RG1_UNCR.dcm"].pixels
    rows, cols = image.shape

    def patch(r0, r1, c0, c1):
        return float(image[int(r0 * rows) : int(r1 * rows), int(c0 * cols) : int(c1 * cols)].mean())

    right_lung = patch(0.2, 0.4, 0.15, 0.30)
    left_lung = patch(0.2, 0.4, 0.65, 0.80)
    mediastinum = patch(0.2, 0.6, 0.46, 0.54)
    assert right_lung < mediastinum - 0.2 and left_lung < mediastinum - 0.2


def test_monochrome1_is_inverted_relative_to_monochrome2():
    ds = load_dataset(pydicom_file("RG1_UNCI.dcm"))
    as_mono1 = read_radiograph(ds).pixels
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_mono2 = read_radiograph(ds).pixels
    np.testing.assert_allclose(as_mono1, 1.0 - as_mono2, atol=1e-6)


def test_resize_keeps_aspect_and_pads_black(rg1):
    image = read_radiograph(pydicom_file("RG1_UNCR.dcm"), size=64)
    assert image.pixels.shape == (64, 64)
    assert image.original_shape == (1955, 1841)
    top, left, height, width = image.content_box
    assert (top, height) == (0, 64)  # the long side (rows) fills the square
    assert width == round(1841 * 64 / 1955) and left == (64 - width) // 2
    assert np.all(image.pixels[:, :left] == 0) and np.all(image.pixels[:, left + width :] == 0)
    content = image.pixels[:, left : left + width]
    assert content.min() >= 0 and content.max() <= 1
    # Area averaging: each output pixel is close to the mean of its block of the full image.
    full = rg1["RG1_UNCR.dcm"].pixels
    assert abs(float(content.mean()) - float(full.mean())) < 0.01


def test_rle_lossless_cr_reads_back_exactly():
    """A real CR (RG1, subsampled for speed) compressed with RLE Lossless by pydicom."""
    ds = load_dataset(pydicom_file("RG1_UNCR.dcm"))
    subsampled = np.ascontiguousarray(ds.pixel_array[::8, ::8])
    ds.Rows, ds.Columns = subsampled.shape
    ds.PixelData = subsampled.tobytes()
    reference = read_radiograph(ds, keep_stored=True)
    ds.compress(RLELossless, subsampled)
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    compressed = read_radiograph(ds, keep_stored=True)
    assert compressed.transfer_syntax_name == "RLE Lossless"
    np.testing.assert_array_equal(compressed.stored, subsampled)
    np.testing.assert_array_equal(compressed.pixels, reference.pixels)


# ------------------------------------------------------------------------------------------
# The grayscale pipeline on controlled values


def test_rescale_then_window(tmp_path, gradient16):
    ds = build_radiograph_dataset(
        np.array([[50, 300, 550, 0], [800, 50, 300, 550]], dtype=np.uint16),
        patient_id="P1",
        patient_name="Test^Rescale",
        study_date="20240101",
    )
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100  # modality value = 2 * stored - 100
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 500, 1000, "LINEAR_EXACT"
    image = read_radiograph(ds)
    # stored 50 -> 0 -> bottom of the window; 300 -> 500 -> centre; 550 -> 1000 -> top.
    np.testing.assert_allclose(image.pixels, [[0.0, 0.5, 1.0, 0.0], [1.0, 0.0, 0.5, 1.0]])
    assert image.voi == "window" and image.window == (500.0, 1000.0)


def test_voi_lut_sequence_is_applied():
    path = pydicom_file("vlut_04.dcm")  # an OT test pattern with a 256-entry, 16-bit VOI LUT
    image = read_radiograph(path, keep_stored=True)
    assert image.voi == "VOI LUT"
    lut = np.asarray(pydicom.dcmread(path).VOILUTSequence[0].LUTData, dtype=np.float64)
    np.testing.assert_allclose(image.pixels, lut[image.stored] / 65535.0, atol=1e-6)


def test_percentile_window_without_voi(gradient16):
    ds = build_radiograph_dataset(
        gradient16, patient_id="P1", patient_name="Test^NoVOI", study_date="20240101"
    )
    del ds.WindowCenter
    del ds.WindowWidth
    image = read_radiograph(ds)
    assert image.voi == "percentile"
    values = gradient16.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    np.testing.assert_allclose(
        image.pixels, np.clip((values - low) / (high - low), 0, 1), atol=1e-6
    )
    assert 0 < np.mean(image.pixels == 0.0) <= 0.01


@pytest.mark.parametrize("compressed", [False, True])
def test_bits_above_bits_stored_are_ignored(compressed):
    values = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    ds = build_radiograph_dataset(
        values, patient_id="P1", patient_name="Test^Bits", study_date="20240101"
    )
    ds.PixelData = (values | 0xB000).astype("<u2").tobytes()  # garbage in the 4 unused bits
    if compressed:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    image = read_radiograph(ds, keep_stored=True)
    np.testing.assert_array_equal(image.stored, values)
    np.testing.assert_allclose(image.pixels, values / 4095.0, atol=1e-6)


def test_signed_values_are_sign_extended_from_bits_stored():
    values = np.array([[-5, 0], [100, -2048]], dtype=np.int16)
    ds = build_radiograph_dataset(
        np.zeros((2, 2), np.uint16), patient_id="P1", patient_name="T^S", study_date="20240101"
    )
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PixelData = (values.astype(np.int32) & 0xFFF).astype("<u2").tobytes()
    np.testing.assert_array_equal(read_radiograph(ds, keep_stored=True).stored, values)


# ------------------------------------------------------------------------------------------
# Refusals and damaged files


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("CT_small.dcm", "got modality CT"),
        ("MR_small.dcm", "got modality MR"),
        ("US1_UNCR.dcm", "got modality US"),
        ("emri_small.dcm", "got modality MR"),  # a 10-frame MR
        ("SC_rgb.dcm", "got PhotometricInterpretation RGB"),
        ("RG3_UNCR.dcm", "got BodyPartExamined EXTREMITY"),  # a CR of a tibia
    ],
)
def test_non_chest_radiographs_are_refused(name, found):
    path = pydicom_file(name)
    with pytest.raises(DicomError, match=found) as caught:
        read_radiograph(path)
    assert path in str(caught.value)


def test_other_body_parts_on_request():
    image = read_radiograph(pydicom_file("RG3_UNCR.dcm"), size=32, require_chest=False)
    assert image.body_part == "EXTREMITY" and image.pixels.shape == (32, 32)


def test_multi_frame_radiograph_is_refused(tmp_path):
    ds = build_radiograph_dataset(
        np.zeros((8, 8), np.uint8), patient_id="P1", patient_name="T^M", study_date="20240101"
    )
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(2 * 8 * 8)
    path = save_dataset_atomic(ds, tmp_path / "two_frames.dcm")
    with pytest.raises(DicomError, match=r"multi-frame image \(2 frames\)"):
        read_radiograph(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    with pytest.raises(DicomFileNotFoundError, match="absent.dcm: no such DICOM file") as caught:
        read_radiograph(path)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a DICOM file"),
        (b"this is a text file, not an image\n" * 10, "not a DICOM file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not a DICOM file"),
    ],
)
def test_not_dicom(tmp_path, content, problem):
    path = tmp_path / "image.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomError, match=problem) as caught:
        read_radiograph(path)
    assert str(path) in str(caught.value)


def test_folder_is_refused(tmp_path):
    with pytest.raises(DicomError, match="is a folder"):
        read_radiograph(tmp_path)


@pytest.mark.parametrize(
    ("name", "keep", "problem"),
    [
        ("RG1_UNCR.dcm", 0.5, "pixel data is less than expected"),  # cut inside Pixel Data
        ("RG1_UNCR.dcm", 300, "no Pixel Data element: the file is truncated"),  # cut in header
        ("RG1_J2KI.dcm", 0.6, "truncated DICOM file"),  # cut inside the JPEG 2000 fragments
    ],
)
def test_truncated_files(tmp_path, name, keep, problem):
    data = Path(pydicom_file(name)).read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else keep
    path = tmp_path / f"cut_{name}"
    path.write_bytes(data[:size])
    with pytest.raises(DicomError, match=problem) as caught:
        read_radiograph(path)
    assert str(path) in str(caught.value)


def test_corrupt_jpeg2000_stream(tmp_path):
    data = bytearray(Path(pydicom_file("RG1_J2KI.dcm")).read_bytes())
    start = data.find(b"\xff\x4f\xff\x51")  # JPEG 2000 start of codestream + image size
    assert start > 0
    data[start + 4 : start + 44] = bytes(range(200, 240))  # garble the image-size segment
    path = tmp_path / "garbled.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(DicomError, match="garbled.dcm: cannot decode the pixel data"):
        read_radiograph(path)


def test_transfer_syntax_without_decoder(tmp_path):
    ds = load_dataset(pydicom_file("RG1_J2KI.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS: no decoder installed
    path = save_dataset_atomic(ds, tmp_path / "jpegls.dcm")
    with pytest.raises(DicomError, match=r"cannot decode the pixel data \(JPEG-LS Lossless"):
        read_radiograph(path)


# ------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_read_back_exactly(tmp_path, dtype):
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    image = rng.integers(0, top + 1, size=(48, 36), dtype=np.int64).astype(dtype)
    image[0, 0], image[0, 1] = 0, top  # the extremes map to exactly 0 and 1
    path = write_radiograph_dicom(
        tmp_path / "study.dcm",
        image,
        patient_id="SIM-0001",
        patient_name="Simulated^Patient",
        study_date="2024-03-05",
        series_description="Round trip",
    )
    read = read_radiograph(path, keep_stored=True)
    np.testing.assert_array_equal(read.stored, image)
    np.testing.assert_array_equal(np.round(read.pixels.astype(np.float64) * top), image)
    assert read.pixels[0, 0] == 0.0 and read.pixels[0, 1] == 1.0
    ds = pydicom.dcmread(path)
    assert ds.Modality == "DX" and ds.ViewPosition == "PA"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.SOPClassUID == DX_FOR_PRESENTATION == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.BitsStored == 8 * np.dtype(dtype).itemsize
    assert (ds.PatientID, str(ds.PatientName), ds.StudyDate) == (
        "SIM-0001",
        "Simulated^Patient",
        "20240305",
    )
    assert ds.SeriesDescription == "Round trip"
    assert [p.name for p in tmp_path.iterdir()] == ["study.dcm"]  # no temporary files left
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_write_float_image(tmp_path):
    image = np.linspace(0.0, 1.0, 30 * 20, dtype=np.float32).reshape(30, 20)
    path = write_radiograph_dicom(
        tmp_path / "f.dcm", image, patient_id="P", patient_name="P^F", study_date="20240101"
    )
    read = read_radiograph(path, size=None)
    np.testing.assert_allclose(read.pixels, image, atol=0.5 / 65535 + 1e-7)


def test_fresh_uids_per_write(tmp_path):
    image = np.zeros((4, 4), np.uint8)
    uids = set()
    for index in range(2):
        path = write_radiograph_dicom(
            tmp_path / f"{index}.dcm",
            image,
            patient_id="P",
            patient_name="P",
            study_date="20240101",
        )
        ds = pydicom.dcmread(path)
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    assert len(uids) == 6


@pytest.mark.parametrize(
    ("image", "options", "problem"),
    [
        (np.zeros((4, 4, 3), np.uint8), {}, "2-D grayscale"),
        (np.zeros((4, 4), np.int32), {}, "dtype int32"),
        (np.full((4, 4), 1.5), {}, r"must lie in \[0, 1\]"),
        (np.full((4, 4), np.nan), {}, "NaN"),
        (np.zeros((4, 4), np.uint8), {"patient_id": " "}, "patient_id must not be empty"),
        (np.zeros((4, 4), np.uint8), {"study_date": "2024-13-40"}, "study_date must be a date"),
        (np.zeros((4, 4), np.uint8), {"study_time": "25:00"}, "study_time must be a time"),
    ],
)
def test_write_refuses_bad_input_and_leaves_nothing(tmp_path, image, options, problem):
    target = tmp_path / "out.dcm"
    target.write_bytes(b"previous content")
    arguments = {"patient_id": "P", "patient_name": "P", "study_date": "20240101", **options}
    with pytest.raises(ValueError, match=problem):
        write_radiograph_dicom(target, image, **arguments)
    assert target.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.dcm"]


def test_export_pair_keeps_longitudinal_order(tmp_path):
    rng = np.random.default_rng(2)
    prior = rng.integers(0, 256, (32, 32), dtype=np.int64).astype(np.uint8)
    followup = rng.integers(0, 256, (32, 32), dtype=np.int64).astype(np.uint8)
    prior_path, followup_path = export_pair_as_dicom(
        tmp_path,
        prior,
        followup,
        patient_id="SIM-42",
        interval_days=45,
        prior_date="20230101",
        prompt="The left pleural effusion becomes moderate.",
        interpretation="Left pleural effusion has increased.",
    )
    assert (prior_path.name, followup_path.name) == ("SIM-42_prior.dcm", "SIM-42_followup.dcm")
    first, second = pydicom.dcmread(prior_path), pydicom.dcmread(followup_path)
    assert (first.StudyDate, second.StudyDate) == ("20230101", "20230215")
    assert first.PatientID == second.PatientID == "SIM-42"
    assert first.StudyInstanceUID != second.StudyInstanceUID
    assert "becomes moderate" in second.ImageComments and "ImageComments" not in first
    np.testing.assert_array_equal(read_radiograph(prior_path, keep_stored=True).stored, prior)
    np.testing.assert_array_equal(read_radiograph(followup_path, keep_stored=True).stored, followup)
    assert sorted(os.listdir(tmp_path)) == ["SIM-42_followup.dcm", "SIM-42_prior.dcm"]


def test_export_pair_refuses_bad_input_and_writes_nothing(tmp_path):
    image = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="interval_days must be >= 0"):
        export_pair_as_dicom(tmp_path, image, image, patient_id="P", interval_days=-3)
    with pytest.raises(ValueError, match="2-D grayscale"):  # the follow-up is bad: no prior either
        export_pair_as_dicom(tmp_path, image, image[None], patient_id="P", interval_days=3)
    assert os.listdir(tmp_path) == []
