"""De-identification (PS3.15 Annex E) on real DICOM files: a radiograph seeded with PHI in many
places (plain elements, sequences, private tags, overlays, curves, dates, times, UIDs), the
real RG1 chest CR, and a simulated prior/follow-up pair."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import warnings
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from progemu_lite.data.deid import Deidentifier, deidentify_file, deidentify_tree
from progemu_lite.data.dicom import (
    DicomError,
    export_pair_as_dicom,
    load_dataset,
    read_radiograph,
    write_radiograph_dicom,
)

SALT = "course-secret-salt"

# Every value here is identifying and must not survive anywhere in the output.
PHI_TEXT = {
    "PatientName": "Doe^Johnathan^Quincy",
    "PatientID": "MRN-99887766",
    "OtherPatientIDs": "ALT-5544332211",
    "AccessionNumber": "ACC-24-0042",
    "ReferringPhysicianName": "Referrer^Rebecca",
    "PerformingPhysicianName": "Performer^Paula",
    "OperatorsName": "Operator^Oscar",
    "InstitutionName": "Saint Exemplary Hospital",
    "InstitutionAddress": "12 Hidden Lane, Smallville",
    "InstitutionalDepartmentName": "Radiology East Wing",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-4815162342",
    "PatientBirthDate": "19470312",
    "PatientAddress": "221B Baker Street London",
    "PatientTelephoneNumbers": "+44-20-7946-0958",
    "PatientAge": "076Y",
    "StudyID": "STUDY-31337",
    "StudyDescription": "CHEST PA for Johnathan",
    "SeriesDescription": "Portable bed 12 Johnathan",
    "ImageComments": "Patient Johnathan Doe, bed 12, ward 7B",
    "ProtocolName": "Johnathan special protocol",
    "AdditionalPatientHistory": "Smoker, lives at 221B",
    "ProcessingFunction": "Site-specific-Johnathan-LUT",  # free text not named by Annex E
}
PHI_DATES = {
    "StudyDate": "20240117",
    "SeriesDate": "20240118",
    "AcquisitionDate": "20240119",
    "ContentDate": "20240120",
}
PHI_TIMES = {
    "StudyTime": "083015.250",
    "SeriesTime": "091122",
    "AcquisitionTime": "234459",  # wraps past midnight for most shifts
    "ContentTime": "0930",
}
PHI_DATETIME = "20240117083101.5+0100"


def seeded_dataset(image: np.ndarray, tmp_path, *, patient=PHI_TEXT, name="phi.dcm"):
    """A real DX file (written by the library) with PHI put in wherever radiographs carry it."""
    path = write_radiograph_dicom(
        tmp_path / name,
        image,
        patient_id=patient["PatientID"],
        patient_name=patient["PatientName"],
        study_date=PHI_DATES["StudyDate"],
    )
    ds = pydicom.dcmread(path)
    for keyword, value in {**patient, **PHI_DATES, **PHI_TIMES}.items():
        setattr(ds, keyword, value)
    ds.AcquisitionDateTime = PHI_DATETIME
    ds.PatientSex = "M"
    # Fixed UIDs, one set per file name: with fresh random ones the new (HMAC) UIDs were random
    # too, and a short secret such as the time "0930" could turn up in one by chance.
    base = f"1.2.826.0.1.3680043.8.498.{zlib.crc32(name.encode())}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = base + ".1", base + ".2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = base + ".3"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.7777777777"
    ds.InstanceCreatorUID = "1.2.826.0.1.3680043.8.498.5555555555"
    # Sequences: one removed whole by Annex E, one that must be walked and cleaned.
    request = Dataset()
    request.RequestedProcedureID = "REQ-777111"
    request.ScheduledProcedureStepID = "SPS-888222"
    request.ReasonForTheRequestedProcedure = "Cough since Johnathan's trip"
    ds.RequestAttributesSequence = Sequence([request])
    source = Dataset()
    source.ReferencedSOPClassUID = ds.SOPClassUID
    source.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.3333333333"
    source.InstanceCreationDate = "20231224"
    source.OperatorsName = "Nested^Nellie"
    source.PersonName = "Person^Pete"  # a PN that the Annex E table here does not name
    source.add_new(0x00110010, "LO", "NESTED PRIVATE CREATOR")
    source.add_new(0x00111001, "LO", "NESTED-PRIVATE-Johnathan")
    ds.SourceImageSequence = Sequence([source])
    # Private tags, an overlay and a curve.
    ds.add_new(0x00090010, "LO", "ACME PRIVATE CREATOR")
    ds.add_new(0x00091001, "LO", "PRIVATE-PHI-Johnathan-Doe")
    ds.add_new(0x00091002, "OB", b"PRIVATE-BYTES-MRN-99887766")
    ds.add_new(0x00091003, "IS", "99887766")  # an MRN in a numeric private element
    ds.EncapsulatedDocument = b"%PDF-1.4 report: Johnathan has a cough "  # binary, not pixels
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000022, "LO", "Overlay of Johnathan")
    ds.add_new(0x60003000, "OW", b"OVERLAY-PHI-BYTES-Johnathan-Doe!")
    ds.add_new(0x50003000, "OW", b"CURVE-PHI-BYTES-Johnathan-Doe!!!")
    ds.save_as(path, enforce_file_format=True)
    return path


def identifying_strings(path) -> set[str]:
    """Every PHI value of a seeded file, including its UIDs as actually written."""
    ds = pydicom.dcmread(path)
    uids = {
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        ds.FrameOfReferenceUID,
        ds.InstanceCreatorUID,
        ds.SourceImageSequence[0].ReferencedSOPInstanceUID,
    }
    strings = set(PHI_TEXT.values()) | set(PHI_DATES.values()) | uids
    strings |= {"20231224", "083015", "091122", "234459", "0930", PHI_DATETIME[:14]}
    strings |= {"REQ-777111", "SPS-888222", "Nested^Nellie", "Person^Pete"}
    strings |= {"NESTED-PRIVATE-Johnathan", "99887766"}
    strings |= {"ACME PRIVATE", "PRIVATE-BYTES", "OVERLAY-PHI", "CURVE-PHI", "Johnathan"}
    return {s for s in strings if s}


def walk_values(ds: Dataset):
    """(name, value as text) for every element, in sequences too, and in the file meta."""
    datasets = [ds] + ([ds.file_meta] if getattr(ds, "file_meta", None) is not None else [])
    while datasets:
        current = datasets.pop()
        for elem in current:
            if elem.VR == "SQ":
                datasets.extend(elem.value)
            elif isinstance(elem.value, bytes):
                yield elem.keyword or str(elem.tag), elem.value.decode("latin-1")
            else:
                yield elem.keyword or str(elem.tag), str(elem.value)


@pytest.fixture()
def gradient():
    return (np.arange(24 * 20).reshape(24, 20) % 251).astype(np.uint8)


@pytest.fixture()
def seeded(tmp_path, gradient):
    return seeded_dataset(gradient, tmp_path)


def test_no_original_value_survives(tmp_path, seeded, gradient):
    out_path = tmp_path / "anon.dcm"
    report = deidentify_file(seeded, out_path, salt=SALT)
    secrets = identifying_strings(seeded)
    out = pydicom.dcmread(out_path)
    for name, text in walk_values(out):
        for secret in secrets:
            assert secret not in text, f"{secret!r} survived in {name}"
    data = out_path.read_bytes()
    for secret in secrets:
        assert secret.encode() not in data, f"{secret!r} survived in the file bytes"
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert not any(elem.tag.group in (0x5000, 0x6000) for elem in out.iterall())
    # What must be there.
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107"}
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientID == str(out.PatientName) == report.patient_pseudonym
    assert out.PatientBirthDate == "" and out.PatientSex == ""
    assert "PatientAge" not in out
    assert out.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID
    assert out.SOPClassUID == pydicom.dcmread(seeded).SOPClassUID  # registered UIDs stay
    assert out.Modality == "DX" and out.ViewPosition == "PA"
    # The image itself is untouched.
    read = read_radiograph(out_path, keep_stored=True)
    np.testing.assert_array_equal(read.stored, gradient)
    # The nested sequence was walked, not dropped: its UID remapped, its date shifted.
    item = out.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID.startswith("2.25.")
    assert item.InstanceCreationDate == (
        dt.date(2023, 12, 24) + dt.timedelta(days=report.date_shift_days)
    ).strftime("%Y%m%d")
    assert "RequestAttributesSequence" not in out
    assert report.needs_pixel_review is False and report.burned_in_annotation == "NO"


def test_input_is_never_modified(tmp_path, seeded):
    before = seeded.read_bytes()
    ds = load_dataset(seeded)
    snapshot = copy.deepcopy(ds)
    Deidentifier(salt=SALT).deidentify(ds)
    assert ds == snapshot and ds.file_meta == snapshot.file_meta
    deidentify_file(seeded, tmp_path / "copy.dcm", salt=SALT)
    assert hashlib.sha256(seeded.read_bytes()).digest() == hashlib.sha256(before).digest()
    with pytest.raises(ValueError, match="refusing to overwrite the source"):
        deidentify_file(seeded, seeded, salt=SALT)
    assert seeded.read_bytes() == before


def test_dates_and_times_shift_consistently(tmp_path, seeded):
    deidentifier = Deidentifier(salt=SALT, date_shift_range_days=(-400, -30))
    out, report = deidentifier.deidentify(load_dataset(seeded))
    days, seconds = report.date_shift_days, report.time_shift_seconds
    assert -400 <= days <= -30 and 0 < seconds < 86400 and seconds % 60 == 0
    for keyword, original in PHI_DATES.items():
        expected = dt.datetime.strptime(original, "%Y%m%d").date() + dt.timedelta(days=days)
        assert out.data_element(keyword).value == expected.strftime("%Y%m%d")

    def clock(text):
        text = text.split(".")[0].ljust(6, "0")
        return int(text[:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])

    for keyword, original in PHI_TIMES.items():
        new = out.data_element(keyword).value
        assert clock(new) == (clock(original) + seconds) % 86400
    assert out.StudyTime.endswith(".250")  # the fraction of a second is kept
    shifted = dt.date(2024, 1, 17) + dt.timedelta(days=days)
    assert out.AcquisitionDateTime.startswith(shifted.strftime("%Y%m%d"))
    assert "+" not in out.AcquisitionDateTime  # the UTC offset (a hint of place) is dropped


def test_intervals_between_a_patients_studies_survive(tmp_path):
    rng = np.random.default_rng(3)
    prior, followup = (
        rng.integers(0, 256, (16, 16), dtype=np.int64).astype(np.uint8) for _ in "ab"
    )
    source_dir, out_dir = tmp_path / "src", tmp_path / "out"
    paths = export_pair_as_dicom(
        source_dir, prior, followup, patient_id="MRN-1234", interval_days=37, prior_date="20221130"
    )
    deidentifier = Deidentifier(salt=SALT)  # one object for the whole run
    reports = [deidentifier.deidentify_file(p, out_dir / p.name) for p in paths]
    before = [pydicom.dcmread(p) for p in paths]
    after = [pydicom.dcmread(out_dir / p.name) for p in paths]

    def day(ds):
        return dt.datetime.strptime(ds.StudyDate, "%Y%m%d").date()

    assert (day(after[1]) - day(after[0])).days == 37
    assert day(after[0]) != day(before[0]) and day(after[1]) != day(before[1])
    assert after[0].PatientID == after[1].PatientID != before[0].PatientID
    assert reports[0].date_shift_days == reports[1].date_shift_days
    assert after[0].StudyInstanceUID != after[1].StudyInstanceUID

    def seconds(ds):
        return int(ds.StudyTime[:2]) * 3600 + int(ds.StudyTime[2:4]) * 60 + int(ds.StudyTime[4:6])

    gap_before = (seconds(before[1]) - seconds(before[0])) % 86400
    assert (seconds(after[1]) - seconds(after[0])) % 86400 == gap_before == 6 * 3600
    assert after[0].StudyTime != before[0].StudyTime


def test_uids_map_consistently_across_files_and_runs(tmp_path, seeded, gradient):
    # A second file of the same patient that references the first one's SOP instance.
    first = pydicom.dcmread(seeded)
    second_path = seeded_dataset(gradient, tmp_path, name="second.dcm")
    second = pydicom.dcmread(second_path)
    second.StudyInstanceUID = first.StudyInstanceUID
    second.SourceImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.save_as(second_path, enforce_file_format=True)

    run = Deidentifier(salt=SALT)
    out_first, _ = run.deidentify(load_dataset(seeded))
    out_second, _ = run.deidentify(load_dataset(second_path))
    assert out_second.StudyInstanceUID == out_first.StudyInstanceUID
    assert out_second.SourceImageSequence[0].ReferencedSOPInstanceUID == out_first.SOPInstanceUID
    assert out_second.SOPInstanceUID != out_first.SOPInstanceUID
    assert pydicom.uid.UID(out_first.SOPInstanceUID).is_valid
    assert run.uid_map[first.SOPInstanceUID] == out_first.SOPInstanceUID

    # Same salt in another run: the same mapping. Another salt: a different one.
    again, _ = Deidentifier(salt=SALT).deidentify(load_dataset(seeded))
    other, other_report = Deidentifier(salt="another salt").deidentify(load_dataset(seeded))
    assert (
        again.SOPInstanceUID == out_first.SOPInstanceUID and again.PatientID == out_first.PatientID
    )
    assert other.SOPInstanceUID != out_first.SOPInstanceUID
    assert other.PatientID != out_first.PatientID


def test_different_patients_get_different_pseudonyms_and_shifts(tmp_path, gradient):
    run = Deidentifier(salt=SALT)
    reports = []
    for index in range(2):
        patient = {**PHI_TEXT, "PatientID": f"MRN-{index}", "PatientName": f"Other^{index}"}
        path = seeded_dataset(gradient, tmp_path, patient=patient, name=f"p{index}.dcm")
        reports.append(run.deidentify(load_dataset(path))[1])
    assert reports[0].patient_pseudonym != reports[1].patient_pseudonym
    assert (reports[0].date_shift_days, reports[0].time_shift_seconds) != (
        reports[1].date_shift_days,
        reports[1].time_shift_seconds,
    )


@pytest.mark.parametrize(
    ("declared", "expected"), [("YES", "YES"), (None, "UNKNOWN"), ("NO", "NO")]
)
def test_burned_in_annotation_is_reported(seeded, declared, expected):
    ds = load_dataset(seeded)
    if declared is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = declared
    out, report = Deidentifier(salt=SALT).deidentify(ds)
    assert report.burned_in_annotation == expected
    assert report.needs_pixel_review is (expected != "NO")
    assert any("BurnedInAnnotation" in w for w in report.warnings) is (expected != "NO")


def test_patient_characteristics_option(seeded):
    out, _ = Deidentifier(salt=SALT, keep_patient_characteristics=True).deidentify(
        load_dataset(seeded)
    )
    assert out.PatientSex == "M" and out.PatientAge == "076Y"
    assert {item.CodeValue for item in out.DeidentificationMethodCodeSequence} == {
        "113100",
        "113107",
        "113108",
    }
    assert "PatientAddress" not in out


def test_real_chest_radiograph_header_is_cleaned():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed")
    ds = load_dataset(path)
    originals = {
        str(ds.PatientName),
        ds.PatientID,
        ds.OtherPatientIDs,
        ds.PatientBirthDate,
        ds.InstitutionName,
        ds.StationName,
        ds.DeviceSerialNumber,
        ds.AccessionNumber,
        str(ds.ReferringPhysicianName),
        ds.StudyDate,
        ds.SeriesDate,
        ds.StudyTime,
        ds.SeriesTime,
        ds.StudyInstanceUID,
        ds.SOPInstanceUID,
        ds.PostprocessingFunction,
    }
    out, report = Deidentifier(salt=SALT).deidentify(ds)
    del out.PixelData  # a 4-character ID could appear in 7 MB of pixels by chance
    for name, text in walk_values(out):
        for original in originals:
            assert original not in text, f"{original!r} survived in {name}"
    assert report.burned_in_annotation == "UNKNOWN" and report.needs_pixel_review
    assert out.Manufacturer == "Philips Medical Systems"  # equipment facts stay


def test_bad_settings_and_files(tmp_path):
    with pytest.raises(ValueError, match="without 0"):
        Deidentifier(salt=SALT, date_shift_range_days=(-10, 10))
    with pytest.raises(ValueError, match=">= 1"):
        Deidentifier(salt=SALT, date_shift_range_days=0)
    with pytest.raises(ValueError, match="salt must not be empty"):
        Deidentifier(salt="")
    with pytest.raises(DicomError, match="no such DICOM file"):
        deidentify_file(tmp_path / "absent.dcm", tmp_path / "out.dcm", salt=SALT)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(DicomError, match="notes.txt: not a DICOM file"):
        deidentify_file(not_dicom, tmp_path / "out.dcm", salt=SALT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_unparseable_date_is_removed_not_kept(seeded):
    ds = load_dataset(seeded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid DA value
        ds.ContentDate = "17 Jan 2024"
    out, report = Deidentifier(salt=SALT).deidentify(ds)
    assert "ContentDate" not in out
    assert any(entry.startswith("ContentDate (unparseable DA") for entry in report.removed)


def test_tree_run_is_consistent_and_all_or_nothing(tmp_path, gradient):
    source = tmp_path / "Doe_Johnathan"  # folder and file names carry PHI too
    seeded_dataset(gradient, source, name="Doe_Johnathan_PA.dcm")
    rng = np.random.default_rng(4)
    prior, followup = (rng.integers(0, 256, (8, 8), dtype=np.int64).astype(np.uint8) for _ in "ab")
    export_pair_as_dicom(source / "sub", prior, followup, patient_id="MRN-1", interval_days=5)
    reports = deidentify_tree(source, tmp_path / "anon", salt=SALT, progress=False)
    assert len(reports) == 3
    written = sorted((tmp_path / "anon").rglob("*.dcm"))
    assert len(written) == 3
    for path in written:
        assert "Doe" not in str(path) and "MRN" not in str(path)
        ds = pydicom.dcmread(path)
        assert path.stem == ds.SOPInstanceUID and path.parent.name == ds.StudyInstanceUID
        assert path.parent.parent.name == ds.PatientID
    pair = [r for r in reports if "sub" in r.source]
    assert pair[0].patient_pseudonym == pair[1].patient_pseudonym
    # A damaged file: an error naming it, and no output folder at all.
    (source / "broken.dcm").write_bytes(b"not dicom")
    with pytest.raises(DicomError, match="broken.dcm: not a DICOM file"):
        deidentify_tree(source, tmp_path / "anon2", salt=SALT, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Doe_Johnathan", "anon"]
    with pytest.raises(ValueError, match="already exists"):
        deidentify_tree(source, tmp_path / "anon", salt=SALT, progress=False)
