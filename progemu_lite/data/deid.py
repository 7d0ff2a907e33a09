"""De-identification of DICOM radiographs, after DICOM PS3.15 Annex E.

What it does (Basic Application Level Confidentiality Profile, with the "Retain Longitudinal
Temporal Information with Modified Dates" option, and optionally "Retain Patient
Characteristics"):

- Patient name and ID are replaced by a pseudonym (the same for every file of one patient);
  the other identifying attributes of Table E.1-1 that radiographs carry are removed or emptied
  (:data:`ACTIONS`).
- Dates and times are shifted consistently per patient: every date by the same whole number of
  days, every time of day by the same number of minutes (modulo 24 h). Intervals in days
  between a patient's studies survive exactly.
- UIDs are remapped with a keyed hash (HMAC-SHA256 of the salt and the UID, written as a
  ``2.25.<integer>`` UID): the same input UID gives the same output UID in every file of a run,
  and for every run with the same salt. Registered DICOM UIDs (SOP classes, transfer syntaxes,
  coding schemes) are kept.
- Private tags, curves (50xx) and overlays (60xx) are removed; sequences are handled
  recursively.
- Anything the table does not name is still cleaned by its value representation: person names
  are emptied, free text (LO, SH, LT, ST, UT, UC, AE, UR) is removed unless it is a known-safe
  technical attribute (:data:`SAFE_TEXT`), unknown (UN) and non-image binary values are removed.
- PatientIdentityRemoved = YES, DeidentificationMethod and its code sequence are set.
- Burned-in annotation cannot be removed from pixels here: the report says whether the file
  declares BurnedInAnnotation = NO; when it says YES or nothing, ``needs_pixel_review`` is True
  so callers and notebooks can warn.

The input dataset is never modified; :func:`deidentify_file` refuses to overwrite its source.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from .dicom import load_dataset, save_dataset_atomic

REMOVE, EMPTY, PSEUDONYM = "X", "Z", "D"

# PS3.15 Table E.1-1, Basic Profile, for the attributes radiographs (and their requests and
# reports) carry. Where the table allows X/Z/D we remove (X). Dates, times and UIDs that are not
# listed here are shifted / remapped by their VR; see the module docstring.
ACTIONS: dict[str, str] = {
    "PatientName": PSEUDONYM,
    "PatientID": PSEUDONYM,
    "PatientBirthDate": EMPTY,
    "PatientSex": EMPTY,
    "AccessionNumber": EMPTY,
    "ReferringPhysicianName": EMPTY,
    "StudyID": EMPTY,
    "ContentCreatorName": EMPTY,
    **dict.fromkeys(
        [
            "AcquisitionComments",
            "AcquisitionContextSequence",
            "AcquisitionDeviceProcessingDescription",
            "AcquisitionProtocolDescription",
            "ActualHumanPerformersSequence",
            "AdditionalPatientHistory",
            "AdmissionID",
            "AdmittingDate",
            "AdmittingDiagnosesCodeSequence",
            "AdmittingDiagnosesDescription",
            "AdmittingTime",
            "Allergies",
            "AuthorObserverSequence",
            "BranchOfService",
            "CassetteID",
            "CommentsOnThePerformedProcedureStep",
            "ConfidentialityConstraintOnPatientDataDescription",
            "ContentCreatorIdentificationCodeSequence",
            "ContentSequence",
            "CountryOfResidence",
            "CurrentPatientLocation",
            "CustodialOrganizationSequence",
            "DataSetTrailingPadding",
            "DateOfLastCalibration",
            "DerivationDescription",
            "DetectorID",
            "DeviceDescription",
            "DeviceSerialNumber",
            "DigitalSignaturesSequence",
            "DischargeDiagnosisDescription",
            "EthnicGroup",
            "FrameComments",
            "GantryID",
            "GeneratorID",
            "HumanPerformerName",
            "HumanPerformerOrganization",
            "IconImageSequence",
            "IdentifyingComments",
            "ImageComments",
            "ImagePresentationComments",
            "ImagingServiceRequestComments",
            "Impressions",
            "InstitutionAddress",
            "InstitutionCodeSequence",
            "InstitutionName",
            "InstitutionalDepartmentName",
            "InsurancePlanIdentification",
            "IntendedRecipientsOfResultsIdentificationSequence",
            "InterpretationApproverSequence",
            "InterpretationAuthor",
            "InterpretationDiagnosisDescription",
            "InterpretationIDIssuer",
            "InterpretationRecorder",
            "InterpretationText",
            "InterpretationTranscriber",
            "IssuerOfAdmissionID",
            "IssuerOfPatientID",
            "IssuerOfServiceEpisodeID",
            "LastMenstrualDate",
            "MedicalAlerts",
            "MedicalRecordLocator",
            "MilitaryRank",
            "ModifiedAttributesSequence",
            "ModifiedImageDescription",
            "ModifyingDeviceID",
            "NameOfPhysiciansReadingStudy",
            "NamesOfIntendedRecipientsOfResults",
            "Occupation",
            "OperatorIdentificationSequence",
            "OperatorsName",
            "OrderCallbackPhoneNumber",
            "OrderEnteredBy",
            "OrderEntererLocation",
            "OriginalAttributesSequence",
            "OtherPatientIDs",
            "OtherPatientIDsSequence",
            "OtherPatientNames",
            "ParticipantSequence",
            "PatientAddress",
            "PatientAge",
            "PatientBirthName",
            "PatientBirthTime",
            "PatientComments",
            "PatientInstitutionResidence",
            "PatientInsurancePlanCodeSequence",
            "PatientMotherBirthName",
            "PatientPrimaryLanguageCodeSequence",
            "PatientPrimaryLanguageModifierCodeSequence",
            "PatientReligiousPreference",
            "PatientSexNeutered",
            "PatientSize",
            "PatientState",
            "PatientTelephoneNumbers",
            "PatientTransportArrangements",
            "PatientWeight",
            "PerformedLocation",
            "PerformedProcedureStepDescription",
            "PerformedProcedureStepID",
            "PerformingPhysicianIdentificationSequence",
            "PerformingPhysicianName",
            "PersonAddress",
            "PersonTelephoneNumbers",
            "PhysicianApprovingInterpretation",
            "PhysiciansOfRecord",
            "PhysiciansOfRecordIdentificationSequence",
            "PhysiciansReadingStudyIdentificationSequence",
            "PlateID",
            "PreMedication",
            "PregnancyStatus",
            "ProtocolName",
            "ReasonForStudy",
            "ReasonForTheImagingServiceRequest",
            "ReasonForTheRequestedProcedure",
            "ReferencedPatientAliasSequence",
            "ReferencedPatientSequence",
            "ReferencedPerformedProcedureStepSequence",
            "ReferencedStudySequence",
            "ReferringPhysicianAddress",
            "ReferringPhysicianIdentificationSequence",
            "ReferringPhysicianTelephoneNumbers",
            "RegionOfResidence",
            "RequestAttributesSequence",
            "RequestedContrastAgent",
            "RequestedProcedureComments",
            "RequestedProcedureDescription",
            "RequestedProcedureID",
            "RequestedProcedureLocation",
            "RequestingPhysician",
            "RequestingService",
            "ResponsibleOrganization",
            "ResponsiblePerson",
            "ResultsComments",
            "ResultsDistributionListSequence",
            "ResultsIDIssuer",
            "ScheduledHumanPerformersSequence",
            "ScheduledPatientInstitutionResidence",
            "ScheduledPerformingPhysicianIdentificationSequence",
            "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepDescription",
            "ScheduledProcedureStepLocation",
            "ScheduledStationAETitle",
            "ScheduledStationName",
            "ScheduledStudyLocation",
            "ScheduledStudyLocationAETitle",
            "SeriesDescription",
            "ServiceEpisodeDescription",
            "ServiceEpisodeID",
            "SmokingStatus",
            "SoftwareVersions",
            "SpecialNeeds",
            "StationName",
            "StudyComments",
            "StudyDescription",
            "StudyIDIssuer",
            "TextComments",
            "TextString",
            "TimeOfLastCalibration",
            "TimezoneOffsetFromUTC",
            "TopicAuthor",
            "TopicKeywords",
            "TopicSubject",
            "TopicTitle",
            "VerifyingObserverIdentificationCodeSequence",
            "VerifyingObserverName",
            "VerifyingObserverSequence",
            "VerifyingOrganization",
            "VisitComments",
        ],
        REMOVE,
    ),
}

# Kept under the Retain Patient Characteristics Option (PS3.15 E.3.6).
PATIENT_CHARACTERISTICS = frozenset(
    {
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "SmokingStatus",
        "PregnancyStatus",
        "PatientSexNeutered",
    }
)

# Free-text attributes (LO, SH, LT, ...) that describe the equipment, the coding or the image
# rendering, never the patient; any other free text not named in ACTIONS is removed.
SAFE_TEXT = frozenset(
    {
        "Manufacturer",
        "ManufacturerModelName",
        "RescaleType",
        "WindowCenterWidthExplanation",
        "LUTExplanation",
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "ContextIdentifier",
        "MappingResource",
        "ImplementationVersionName",
        "DeidentificationMethod",
    }
)
# Dates that version a coding resource rather than describe the patient: not shifted.
UNSHIFTED_DATES = frozenset({"ContextGroupVersion", "ContextGroupLocalVersion"})
FREE_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "AE", "UR"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
SAFE_BINARY = frozenset(
    {
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "LUTData",
        "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
        "ICCProfile",
        "FileMetaInformationVersion",
    }
)

METHOD_TEXT = "PS3.15 E.1 Basic Profile, modified dates; ProgEmu-Lite"  # LO: at most 64 chars
METHOD_CODES = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "characteristics": ("113108", "Retain Patient Characteristics Option"),
}


@dataclass
class DeidReport:
    """What :meth:`Deidentifier.deidentify` did to one dataset.

    ``needs_pixel_review`` is True unless the file declared BurnedInAnnotation = NO: text burned
    into the pixels (names, dates) survives header de-identification, so someone has to look.
    """

    source: str
    patient_pseudonym: str
    date_shift_days: int
    time_shift_seconds: int
    burned_in_annotation: str  # "YES", "NO" or "UNKNOWN" (absent or unreadable)
    needs_pixel_review: bool
    removed: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    remapped_uids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _check_keywords() -> None:
    unknown = [
        keyword
        for keyword in (*ACTIONS, *SAFE_TEXT, *SAFE_BINARY, *PATIENT_CHARACTERISTICS)
        if tag_for_keyword(keyword) is None
    ]
    if unknown:  # a typo here would silently leave an attribute in place
        raise RuntimeError(f"unknown DICOM keywords in the de-identification tables: {unknown}")


_check_keywords()


def _parse_time(text: str) -> tuple[int, int]:
    """'HH[MM[SS[.F]]]' (or 'HH:MM:SS') -> (whole seconds, fraction digits)."""
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", text.replace(":", ""))
    if not match:
        raise ValueError(f"not a DICOM time: {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 60:
        raise ValueError(f"not a DICOM time: {text!r}")
    return hours * 3600 + minutes * 60 + min(seconds, 59), len(match.group(4) or "")


class Deidentifier:
    """PS3.15 Annex E de-identification with per-patient date shifts and keyed UID remapping.

    ``salt``: the secret key. Same salt -> same pseudonyms, date shifts and UIDs (so files
    de-identified in different runs still link up); keep it secret, or the mapping can be
    recomputed. None draws a random one for this object: consistent within the run only.
    ``date_shift_range_days``: N (shift every date 1..N days into the past) or an inclusive
    (low, high) range that must not contain 0.
    ``keep_patient_characteristics``: keep sex, age, size, weight (the PS3.15 option); the
    plain Basic Profile removes them.
    """

    def __init__(
        self,
        salt: bytes | str | None = None,
        date_shift_range_days: int | tuple[int, int] = 3650,
        *,
        keep_patient_characteristics: bool = False,
    ) -> None:
        if salt is None:
            salt = secrets.token_bytes(32)
        if isinstance(salt, str):
            salt = salt.encode("utf-8")
        if not salt:
            raise ValueError("salt must not be empty: it is the key of the pseudonyms")
        self._key = bytes(salt)
        if isinstance(date_shift_range_days, int):
            if date_shift_range_days < 1:
                raise ValueError(f"date_shift_range_days must be >= 1, got {date_shift_range_days}")
            low, high = -date_shift_range_days, -1
        else:
            low, high = (int(v) for v in date_shift_range_days)
        if low > high or low <= 0 <= high:
            raise ValueError(
                f"date_shift_range_days must be a range without 0, got ({low}, {high}): a zero "
                "shift would leave real dates in place"
            )
        self.date_shift_range = (low, high)
        self.keep_patient_characteristics = keep_patient_characteristics
        self.uid_map: dict[str, str] = {}  # original -> new, for every UID remapped in this run

    # -- keyed derivations ------------------------------------------------------------------

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).digest()

    def remap_uid(self, uid: str) -> str:
        """A new UID for ``uid``: '2.25.' + 128 bits of HMAC (PS3.5 B.2), stable per salt."""
        uid = uid.strip().rstrip("\x00")
        if uid not in self.uid_map:
            number = int.from_bytes(self._digest("uid", uid)[:16], "big")
            self.uid_map[uid] = f"2.25.{number}"
        return self.uid_map[uid]

    def pseudonym(self, patient_key: str) -> str:
        return "ANON" + self._digest("patient", patient_key).hex()[:12].upper()

    def shifts(self, patient_key: str) -> tuple[int, int]:
        """(days, seconds): this patient's date shift and time-of-day shift."""
        digest = self._digest("shift", patient_key)
        low, high = self.date_shift_range
        days = low + int.from_bytes(digest[:8], "big") % (high - low + 1)
        minutes = 1 + int.from_bytes(digest[8:16], "big") % (24 * 60 - 1)  # never 0 or 24 h
        return days, minutes * 60

    # -- the walk ----------------------------------------------------------------------------

    def deidentify(self, ds: Dataset) -> tuple[Dataset, DeidReport]:
        """A de-identified copy of ``ds`` (``ds`` itself is not modified) and a report."""
        source = str(getattr(ds, "filename", None) or "<dataset>")
        out = copy.deepcopy(ds)
        patient_key = str(ds.get("PatientID", "") or "").strip()
        warnings: list[str] = []
        if not patient_key:
            name = str(ds.get("PatientName", "") or "")
            birth = str(ds.get("PatientBirthDate", "") or "")
            patient_key = f"{name}|{birth}" if name or birth else ""
        if not patient_key:
            patient_key = "study:" + str(ds.get("StudyInstanceUID", "") or source)
            warnings.append(
                "no PatientID or PatientName: this study gets its own pseudonym and date shift"
            )
        days, seconds = self.shifts(patient_key)
        burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        burned_in = burned_in if burned_in in ("YES", "NO") else "UNKNOWN"
        if burned_in != "NO":
            warnings.append(
                f"BurnedInAnnotation is {burned_in}: text in the pixels may identify the "
                "patient; review the image before sharing"
            )
        report = DeidReport(
            source=source,
            patient_pseudonym=self.pseudonym(patient_key),
            date_shift_days=days,
            time_shift_seconds=seconds,
            burned_in_annotation=burned_in,
            needs_pixel_review=burned_in != "NO",
            warnings=warnings,
        )
        self._clean(out, report, path="")
        self._mark(out)
        out.file_meta = self._file_meta(ds, out)
        return out, report

    def _clean(self, ds: Dataset, report: DeidReport, path: str) -> None:
        for elem in list(ds):  # a list: elements are deleted while walking
            self._clean_element(ds, elem, report, path)

    def _clean_element(self, ds: Dataset, elem: DataElement, report: DeidReport, path: str):
        tag = elem.tag
        keyword = elem.keyword or keyword_for_tag(tag) or ""
        name = f"{path}{keyword or str(tag)}"
        group = tag.group
        if tag.is_private:
            del ds[tag]
            report.removed.append(f"{name} (private)")
            return
        if (0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF) and group % 2 == 0:
            del ds[tag]
            report.removed.append(f"{name} (curve/overlay)")
            return
        if tag.element == 0 or tag == 0xFFFCFFFC:  # group lengths, trailing padding
            del ds[tag]
            return
        action = ACTIONS.get(keyword)
        if self.keep_patient_characteristics and keyword in PATIENT_CHARACTERISTICS:
            action = "K"
        if action == REMOVE:
            del ds[tag]
            report.removed.append(name)
        elif action == EMPTY:
            elem.value = Sequence() if elem.VR == "SQ" else ""
            report.emptied.append(name)
        elif action == PSEUDONYM:
            elem.value = report.patient_pseudonym
            report.replaced.append(name)
        elif action == "K":
            pass
        elif elem.VR == "SQ":
            for index, item in enumerate(elem.value):
                self._clean(item, report, f"{name}[{index}].")
        elif elem.VR == "UI":
            self._remap_uids(elem, report, name)
        elif elem.VR in ("DA", "DT", "TM"):
            if keyword not in UNSHIFTED_DATES:
                self._shift(ds, elem, report, name)
        elif elem.VR == "PN":
            elem.value = ""
            report.emptied.append(name)
        elif elem.VR in FREE_TEXT_VRS and keyword not in SAFE_TEXT:
            del ds[tag]
            report.removed.append(f"{name} (free text)")
        elif elem.VR in BINARY_VRS and keyword not in SAFE_BINARY:
            del ds[tag]
            report.removed.append(f"{name} ({elem.VR} data)")

    def _remap_uids(self, elem: DataElement, report: DeidReport, name: str) -> None:
        values = list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value]
        new_values = []
        changed = False
        for value in values:
            text = str(value or "").strip().rstrip("\x00")
            if not text or text in UID_dictionary:  # empty, or a registered DICOM UID
                new_values.append(text)
            else:
                new_values.append(self.remap_uid(text))
                changed = True
        if changed:
            elem.value = new_values if len(new_values) > 1 else new_values[0]
            report.remapped_uids.append(name)

    def _shift(self, ds: Dataset, elem: DataElement, report: DeidReport, name: str) -> None:
        days, seconds = report.date_shift_days, report.time_shift_seconds
        raw = elem.value
        values = list(raw) if isinstance(raw, MultiValue | list) else [raw]
        try:
            shifted = [
                self._shift_value(elem.VR, str(v or "").strip(), days, seconds) for v in values
            ]
        except ValueError as err:
            del ds[elem.tag]  # unparseable: cannot shift it, so it cannot stay
            report.removed.append(f"{name} (unparseable {elem.VR}: {err})")
            return
        if any(str(v or "").strip() for v in values):
            elem.value = shifted if len(shifted) > 1 else shifted[0]
            report.shifted.append(name)

    @staticmethod
    def _shift_value(vr: str, text: str, days: int, seconds: int) -> str:
        if not text:
            return ""
        if vr == "DA":
            date = dt.datetime.strptime(text.replace(".", ""), "%Y%m%d").date()
            return (date + dt.timedelta(days=days)).strftime("%Y%m%d")
        if vr == "TM":
            return Deidentifier._shift_time(text, seconds)
        # DT: YYYYMMDD[HH[MM[SS[.F]]]][&ZZXX]; the UTC offset is dropped (it hints at a place).
        body = re.split(r"[+-]", text, maxsplit=1)[0]
        if len(body) < 8:
            raise ValueError(f"date-time {text!r} has no day to shift")
        date = dt.datetime.strptime(body[:8], "%Y%m%d").date() + dt.timedelta(days=days)
        time_part = body[8:]
        return date.strftime("%Y%m%d") + (
            Deidentifier._shift_time(time_part, seconds) if time_part else ""
        )

    @staticmethod
    def _shift_time(text: str, seconds: int) -> str:
        whole, digits = _parse_time(text)
        fraction = text.split(".", 1)[1] if digits else ""
        total = (whole + seconds) % 86400
        hhmmss = f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}"
        return f"{hhmmss}.{fraction}" if fraction else hhmmss

    def _mark(self, ds: Dataset) -> None:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD_TEXT
        options = ["basic", "dates"]
        if self.keep_patient_characteristics:
            options.append("characteristics")
        codes = Sequence()
        for option in options:
            item = Dataset()
            item.CodeValue, item.CodeMeaning = METHOD_CODES[option]
            item.CodingSchemeDesignator = "DCM"
            codes.append(item)
        ds.DeidentificationMethodCodeSequence = codes
        ds.LongitudinalTemporalInformationModified = "MODIFIED"

    def _file_meta(self, original: Dataset, out: Dataset) -> FileMetaDataset:
        """A fresh file meta group: no source AE title, remapped instance UID."""
        old = getattr(original, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        sop_class = out.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        if "SOPInstanceUID" in out:
            meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
        if "TransferSyntaxUID" in old:
            meta.TransferSyntaxUID = old.TransferSyntaxUID
        return meta

    # -- files -------------------------------------------------------------------------------

    def deidentify_file(self, src: str | os.PathLike, dst: str | os.PathLike) -> DeidReport:
        """De-identify one DICOM file into ``dst`` (written atomically; ``src`` is untouched)."""
        src, dst = Path(src), Path(dst)
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise ValueError(
                f"{dst}: refusing to overwrite the source file with its de-identified copy"
            )
        ds = load_dataset(src)
        out, report = self.deidentify(ds)
        report.source = str(src)
        save_dataset_atomic(out, dst)
        return report


def deidentify_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    salt: bytes | str | None = None,
    deidentifier: Deidentifier | None = None,
) -> DeidReport:
    """De-identify ``src`` into ``dst``. Pass one ``deidentifier`` (or the same ``salt``) for
    every file of a run so that UIDs, pseudonyms and date shifts stay consistent."""
    if deidentifier is not None and salt is not None:
        raise ValueError("pass either salt or deidentifier, not both")
    return (deidentifier or Deidentifier(salt=salt)).deidentify_file(src, dst)


def deidentify_tree(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    deidentifier: Deidentifier | None = None,
    salt: bytes | str | None = None,
    pattern: str = "*.dcm",
    progress: bool = True,
) -> list[DeidReport]:
    """De-identify every file matching ``pattern`` under ``src_dir`` with one Deidentifier.

    Output: ``dst_dir/<pseudonym>/<new StudyInstanceUID>/<new SOPInstanceUID>.dcm``. Input file
    and folder names are not reused: they often carry names or record numbers. ``dst_dir`` must
    not exist; it is built under a temporary name and renamed at the end, so a bad file (which
    raises a DicomError naming it) leaves no half-done folder behind.
    """
    from tqdm.auto import tqdm

    if deidentifier is not None and salt is not None:
        raise ValueError("pass either salt or deidentifier, not both")
    deidentifier = deidentifier or Deidentifier(salt=salt)
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: no such folder")
    if dst_dir.exists():
        raise ValueError(f"{dst_dir}: already exists; choose a new output folder")
    files = sorted(path for path in src_dir.rglob(pattern) if path.is_file())
    if not files:
        raise ValueError(f"{src_dir}: no files matching {pattern!r}")
    dst_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(dir=dst_dir.parent, prefix=f".{dst_dir.name}.", suffix=".partial")
    )
    reports = []
    try:
        for path in tqdm(files, desc="de-identifying", unit="file", disable=not progress):
            out, report = deidentifier.deidentify(load_dataset(path))
            report.source = str(path)
            target = staging / report.patient_pseudonym / str(out.get("StudyInstanceUID", "study"))
            name = str(out.get("SOPInstanceUID", "") or f"instance{len(reports) + 1}")
            save_dataset_atomic(out, target / f"{name}.dcm")
            reports.append(report)
        os.replace(staging, dst_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return reports
