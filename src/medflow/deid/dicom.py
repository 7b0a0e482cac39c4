"""De-identification of DICOM instances by PS3.15 Annex E: the Basic Application Level
Confidentiality Profile (E.1) with the options of E.3, actions from Table E.1-1.

How medflow applies the table (decisions where the standard leaves a choice):

- Actions apply at every nesting level. Combined codes (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``,
  ``X/Z/U*``) depend on the IOD's attribute type; medflow does not know it, so it picks D if
  the code contains D, else U, else Z (:func:`medflow.deid.profile.resolve_combined`): the
  result keeps any IOD valid and leaks nothing.
- D (dummy): a non-empty value of the VR (``ANONYMIZED``, ``19000101``, ``0``...);
  PatientID and PatientName (Z, where E.1 allows a pseudonym) become the patient's pseudonym
  (:meth:`medflow.deid.keys.DeidKeys.patient_pseudonym` of the (system, PatientID) pair that
  FHIR Patient.identifier uses); AccessionNumber (Z) becomes
  ``DeidKeys.identifier("accession", value)``, the value FHIR de-identification gives the
  ACSN identifier, so reports still link to studies. D on a sequence (Content Sequence,
  Graphic Annotation Sequence, Institution Code Sequence...) keeps its items and applies the
  profile to them in *dummy mode*: long free text not in the table (ST, LT, UT: an SR TEXT
  item's TextValue, a text object's UnformattedTextValue) is replaced by a dummy, short text
  (LO, SH, PN, UC: code meanings) is cleaned as below. Under clean-structured-content (C) the
  TextValue is cleaned instead, so the findings stay readable.
- C (clean): dates, times and date-times under retain-long-modified-dates move by the
  patient's date shift (whole days: the time of day is kept; E.3.6); text (descriptors,
  E.3.5; structured content, E.3.4; patient characteristics, AE titles) has every identifying
  value of the instance (names and their components, IDs, dates in common spellings,
  institution, stations... taken from the attributes the profile does not keep, before
  anything is changed) replaced by ``***``; a sequence is kept and applied in *clean mode*
  (free text not in the table is cleaned). Z on a sequence empties it.
- U: each non-registered UID becomes :meth:`DeidKeys.uid` of it, so a UID maps the same in
  headers, references and evidence sequences of every instance. UI attributes not in the table
  keep registered UIDs (pydicom's UID dictionary) and map any other (PS3.15 E.3.9 unless
  retain-uids).
- Private attributes (odd groups, PS3.15 E.3.10) are removed with their creators unless
  retain-safe-private is chosen and (creator, group, element byte) is safe-listed. Curves
  (50xx) and overlay groups (60xx) are removed whole, under clean-graphics too: a bitmap
  cannot be proven clean, and removing a whole group keeps the Overlay Plane Module valid.
- Burned-in text (E.3.1): BurnedInAnnotation YES, or a modality of ``burned_in_modalities``
  without BurnedInAnnotation NO, makes the instance :class:`Excluded` or, with the ``blank``
  policy and a region configured for its modality and size, blanks those boxes in decoded
  pixels (written Explicit VR Little Endian, BurnedInAnnotation NO, code 113101).
- Standard attributes not in the table are kept; even-group tags that are in no data
  dictionary (pydicom's, repeating groups included) are removed: nothing says they are safe.
- Marked with PatientIdentityRemoved YES, DeidentificationMethod and its CID 7050 code
  sequence (PS3.15 E.1.1), and LongitudinalTemporalInformationModified (0028,0303):
  MODIFIED, UNMODIFIED or REMOVED.
"""

from __future__ import annotations

import copy
import logging
import re
import struct
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import get_entry
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from medflow.core.errors import InvalidInput
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import (
    BASIC_CODE,
    CLEAN_PIXEL_CODE,
    OPTION_CODES,
    ActionTable,
    DicomProfile,
    Option,
)
from medflow.fhir.identifiers import MRN_SYSTEM, patient_system

log = logging.getLogger(__name__)

Mode = Literal["D", "C"] | None
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
LONG_TEXT_VRS = frozenset({"ST", "LT", "UT"})
IDENTIFYING_VRS = frozenset({"PN", "LO", "SH", "AE", "DA", "DT", "UC", "LT", "ST", "UT"})
EXTRA_REMOVED = frozenset({
    0x00081190,  # Retrieve URL: the source archive's address with the original UIDs
    0x0040E010,  # Retrieve URI
    0x00420010,  # Document Title (free text naming the patient)
    0x0040E001,  # HL7 Instance Identifier (the source's document id)
    0x00080051,  # Issuer of Accession Number Sequence (the issuing institution)
})  # fmt: skip
"""Standard attributes Table E.1-1 does not list that carry the source's identity: removed."""
SAME_AS_FHIR = frozenset({0x00400512, 0x00400551})
"""Container Identifier and Specimen Identifier (D in the table): the pseudonym FHIR gives the
same value (``keys.identifier("id", value)``), so a slide stays linked to its Specimen."""
SCRUB = re.compile(
    r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b"  # 3/14/2024, 14.03.24
    r"|\b(?:19|20)\d{2}-?\d{2}-?\d{2}\b"  # 2024-03-14, 20240314
    r"|(?P<digits>\+?\(?\d[\d ().-]{5,}\d)"  # phone numbers, long ids (7+ digits: _scrub)
    r"|[\w.+-]+@[\w-]+\.[\w.-]+"  # e-mail addresses
    r"|\b\d+\s+(?:[A-Z][\w'-]*\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Drive|Dr|"
    r"Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq)\b\.?",  # 12 Elm Street
    re.IGNORECASE,
)
"""What cleaning removes from text besides the instance's own identifying values: dates,
phone numbers and long digit runs, e-mail and street addresses (PS3.15 E.3.5 asks cleaning
to remove what identifies; values not in the header are only found by such patterns)."""
NO_PATIENT_SYSTEM = "urn:medflow:deid:study"
"""The key system of an instance without PatientID (value: its StudyInstanceUID)."""
DUMMY_TEXT = "ANONYMIZED"
DUMMY_PN = "ANONYMOUS"
CLEANED = "***"
DUMMY_BY_VR: dict[str, Any] = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
    "UR": "urn:medflow:anonymized",
    "FL": 0.0,
    "FD": 0.0,
    "SL": 0,
    "SS": 0,
    "UL": 0,
    "US": 0,
    "SV": 0,
    "UV": 0,
}
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
PATIENT_NAME, PATIENT_ID, ACCESSION = 0x00100010, 0x00100020, 0x00080050
TEXT_VALUE, PIXEL_DATA = 0x0040A160, 0x7FE00010
READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    OSError,
    IndexError,
    AttributeError,
    NotImplementedError,
    OverflowError,
    struct.error,
    zlib.error,
)
"""What pydicom raises on input it cannot parse or encode."""


class Excluded(InvalidInput):
    """The instance cannot be de-identified safely and is left out (burned-in text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"excluded: {reason}")
        self.reason = reason


class DicomdirSkipped(InvalidInput):
    """A DICOMDIR (Media Storage Directory): not de-identified, its records hold PHI."""


@dataclass
class _Context:
    """What one instance's de-identification needs: its patient and identifying values."""

    pseudonym: str
    shift: timedelta
    system: str
    pattern: re.Pattern[str] | None
    blanked: bool = False
    used_creators: set[tuple[int, int]] = field(default_factory=set)


def _is_standard(tag: BaseTag) -> bool:
    """Whether ``tag`` is a data dictionary attribute (repeating groups included)."""
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _is_registered(uid: str) -> bool:
    return uid.strip().rstrip("\0") in UID_dictionary


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _date_variants(text: str) -> list[str]:
    """``YYYYMMDD`` and its common spellings in free text."""
    if len(text) < 8 or not text[:8].isdigit():
        return [text]
    y, m, d = text[:4], text[4:6], text[6:8]
    return [text, text[:8], f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"]


def _scrub(match: re.Match[str]) -> str:
    """A :data:`SCRUB` match cleaned; a run of digits only when it looks like a phone number
    or an id: 8 digits or more, or 7 with a ``+``, ``(`` or ``-`` ("T1 3.0 1.5 2.0" in a
    series description stays)."""
    digits = match.group("digits")
    if digits is not None:
        count = sum(c.isdigit() for c in digits)
        if count < 7 or (count == 7 and not set(digits) & set("+(-")):
            return match.group(0)
    return CLEANED


def _pattern(values: set[str]) -> re.Pattern[str] | None:
    """A case-insensitive pattern of the identifying ``values`` (3 characters or more). Those
    under 8 characters match only where they are not glued to more letters (or digits, for a
    value that ends in one), so a name "Ann" does not eat "annotation"; longer ones match
    anywhere."""
    ordered = sorted((v for v in values if len(v) >= 3), key=len, reverse=True)
    if not ordered:
        return None
    return re.compile("|".join(_bounded(v) for v in ordered), re.IGNORECASE)


def _edge(char: str) -> str:
    """What may not touch a value that starts or ends with ``char``: a letter, or a digit."""
    if char.isalpha():
        return r"[^\W\d_]"
    return r"\d" if char.isdigit() else ""


def _bounded(value: str) -> str:
    text = re.escape(value)
    if len(value) >= 8:
        return text
    head, tail = _edge(value[0]), _edge(value[-1])
    return (f"(?<!{head})" if head else "") + text + (f"(?!{tail})" if tail else "")


def shift_da(value: str, shift: timedelta) -> str:
    """A DA value moved by ``shift`` (empty when it is no full date)."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        return (date(int(text[:4]), int(text[4:6]), int(text[6:8])) + shift).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def shift_dt(value: str, shift: timedelta) -> str:
    """A DT value with its date part moved by ``shift``; time and offset kept."""
    text = value.strip()
    moved = shift_da(text[:8], shift)
    return moved + text[8:] if moved else ""


class DicomDeidentifier:
    """Applies a :class:`DicomProfile` with the pseudonyms, UIDs and shifts of ``keys``."""

    def __init__(
        self,
        profile: DicomProfile,
        keys: DeidKeys,
        *,
        patient_system: str = MRN_SYSTEM,
        use_issuer: bool = False,
        table: ActionTable | None = None,
    ) -> None:
        self.profile = profile
        self.keys = keys
        self.patient_system = patient_system
        self.use_issuer = use_issuer
        self.table = table or ActionTable.standard()
        self.options = frozenset(profile.options)

    # -- public API -------------------------------------------------------------------------

    def deidentify(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (with file meta when ``ds`` has it).

        Raises :class:`Excluded` for burned-in text that the profile cannot blank."""
        out = copy.deepcopy(ds)
        if isinstance(out, FileDataset):
            out.preamble = b"\0" * 128  # the source's (a TIFF header, a vendor's) never travels
        ctx = self._context(out)
        self._burned_in(out, ctx)
        self._walk(out, ctx, None)
        self._mark(out, ctx)
        if hasattr(out, "file_meta") and out.file_meta is not None and len(out.file_meta):
            out.file_meta = self._file_meta(out)
        return out

    def deidentify_bytes(self, data: bytes) -> bytes:
        """A Part-10 file de-identified (file meta rebuilt: MediaStorageSOPInstanceUID updated,
        SourceApplicationEntityTitle and the like dropped). :class:`InvalidInput` when pydicom
        cannot read it, :class:`Excluded` as in :meth:`deidentify`."""
        try:
            ds = pydicom.dcmread(BytesIO(data))
            if "DirectoryRecordSequence" in ds:
                raise DicomdirSkipped("a DICOMDIR is not de-identified (it holds PHI; rebuild it)")
            if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
                raise InvalidInput("not a storable instance: no SOP Class or SOP Instance UID")
            ds.file_meta = self._file_meta(ds)
            out = self.deidentify(ds)
            buffer = BytesIO()
            pydicom.dcmwrite(buffer, out, enforce_file_format=True)
        except InvalidInput:
            raise
        except READ_ERRORS as exc:
            raise InvalidInput(
                f"not a DICOM Part-10 file that can be read and de-identified "
                f"({type(exc).__name__})"
            ) from None
        return buffer.getvalue()

    # -- context ----------------------------------------------------------------------------

    def _context(self, ds: Dataset) -> _Context:
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        system = patient_system(issuer, default=self.patient_system, use_issuer=self.use_issuer)
        pid = str(ds.get("PatientID", "") or "").strip()
        if not pid:  # no PatientID: keyed on the study, so two such patients never merge
            system, pid = NO_PATIENT_SYSTEM, str(ds.get("StudyInstanceUID", "") or "").strip()
        shift = self.keys.date_shift(system, pid) if pid else self.keys.default_shift()
        values: set[str] = set()
        self._collect(ds, values)
        return _Context(self.keys.patient_pseudonym(system, pid), shift, system, _pattern(values))

    def _collect(self, ds: Dataset, values: set[str]) -> None:
        """Identifying values: text of attributes the profile does not keep (E.3.5's "values
        that identify"); descriptors themselves are not identities."""
        for elem in ds:
            if elem.tag.group % 2 == 1:
                continue
            if elem.VR == "SQ":
                for item in elem.value or []:
                    self._collect(item, values)
                continue
            action = self.table.action(elem.tag, self.options)
            if elem.VR not in IDENTIFYING_VRS or action in (None, "K"):
                continue
            if self.table.is_descriptor(elem.tag):
                continue
            for value in _values(elem):
                text = str(value).strip()
                if elem.VR == "PN":
                    values.update(re.split(r"[\^=]+", text))
                    values.add(text.replace("^", " ").strip())
                if elem.VR in ("DA", "DT"):
                    values.update(_date_variants(text))
                values.add(text)

    # -- the walk ---------------------------------------------------------------------------

    def _walk(self, ds: Dataset, ctx: _Context, mode: Mode) -> None:
        creators: list[BaseTag] = []
        for tag in list(ds.keys()):
            group, element = tag.group, tag.element
            if element == 0 or group in (0x0002,):
                del ds[tag]
            elif group % 2 == 1:
                if 0x0010 <= element <= 0x00FF:
                    creators.append(tag)
                else:
                    self._private(ds, tag, ctx, mode)
            elif group & 0xFF00 in (0x5000, 0x6000) or not _is_standard(tag):
                del ds[tag]  # curves, overlays, unknown tags: removed (module docstring)
            else:
                self._element(ds, ds[tag], ctx, mode)
        for tag in creators:
            if (tag.group, tag.element) not in ctx.used_creators:
                del ds[tag]

    def _private(self, ds: Dataset, tag: BaseTag, ctx: _Context, mode: Mode) -> None:
        block = (tag.group, tag.element >> 8)
        creator = ds.get(Tag(*block)) if block[1] >= 0x10 else None
        name = str(creator.value) if creator is not None and creator.value else ""
        if (
            tag.element >= 0x1000
            and name
            and self.profile.is_safe_private(name, tag.group, tag.element & 0xFF)
        ):
            ctx.used_creators.add(block)
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value or []:
                    self._walk(item, ctx, mode or "C")
            return
        del ds[tag]

    def _element(self, ds: Dataset, elem: DataElement, ctx: _Context, mode: Mode) -> None:
        action = self.table.action(elem.tag, self.options)
        if action is None and elem.tag in EXTRA_REMOVED:
            del ds[elem.tag]
            return
        if action == "D" and elem.tag in SAME_AS_FHIR:
            value = str(elem.value or "").strip()
            elem.value = self.keys.identifier("id", value) if value else DUMMY_TEXT
            return
        if elem.VR == "SQ":
            self._sequence(ds, elem, action, ctx, mode)
        elif action is None:
            self._unlisted(ds, elem, ctx, mode)
        elif action == "X":
            del ds[elem.tag]
        elif action == "K":
            return
        elif action == "Z":
            self._zero(elem, ctx)
        elif action == "D":
            self._dummy(ds, elem, ctx)
        elif action == "U":
            self._uid(elem) if elem.VR == "UI" else self._dummy(ds, elem, ctx)
        else:
            self._clean(elem, ctx)

    def _sequence(
        self, ds: Dataset, elem: DataElement, action: str | None, ctx: _Context, mode: Mode
    ) -> None:
        if action == "X":
            del ds[elem.tag]
            return
        row = self.table.row(elem.tag)
        if action == "Z" or (action == "D" and row is not None and "Z" in row["basic"].split("/")):
            elem.value = Sequence()  # X/Z/D code sequences (institution, person): emptied
            return
        inner: Mode = mode
        if action == "D":
            inner = "D" if mode != "D" else mode
        elif action == "C":
            inner = mode or "C"
        for item in elem.value or []:
            self._walk(item, ctx, inner)

    def _unlisted(self, ds: Dataset, elem: DataElement, ctx: _Context, mode: Mode) -> None:
        """A standard attribute Table E.1-1 does not list: kept, except UIDs (E.3.9), URLs
        (removed: they address the source), person names (a dummy) and free text (cleaned;
        inside a D sequence long text becomes a dummy)."""
        if elem.VR == "UI":
            if not self.profile.has(Option.RETAIN_UIDS):
                self._uid(elem)
        elif elem.VR == "UR":
            del ds[elem.tag]
        elif elem.VR == "PN" and _values(elem):
            elem.value = DUMMY_PN
        elif elem.VR in TEXT_VRS and _values(elem):
            if mode == "D" and (elem.VR in LONG_TEXT_VRS or elem.tag == TEXT_VALUE):
                elem.value = DUMMY_TEXT
            else:
                self._clean_text(elem, ctx)

    def _zero(self, elem: DataElement, ctx: _Context) -> None:
        if elem.tag == PATIENT_NAME:
            elem.value = ctx.pseudonym
        elif elem.tag == PATIENT_ID:
            elem.value = self._patient_id(elem, ctx)
        elif elem.tag == ACCESSION:
            value = str(elem.value or "").strip()
            elem.value = self.keys.identifier("accession", value) if value else ""
        elif elem.VR in BINARY_VRS:
            elem.value = b""
        else:
            elem.value = None if elem.VR not in TEXT_VRS | {"CS", "AE", "DA", "TM", "DT"} else ""

    def _patient_id(self, elem: DataElement, ctx: _Context) -> str:
        value = str(elem.value or "").strip()
        return self.keys.patient_pseudonym(ctx.system, value) if value else ctx.pseudonym

    def _dummy(self, ds: Dataset, elem: DataElement, ctx: _Context) -> None:
        vr = elem.VR
        if elem.tag == PATIENT_NAME:
            elem.value = ctx.pseudonym
        elif elem.tag == PATIENT_ID:
            elem.value = self._patient_id(elem, ctx)
        elif vr == "UI":
            self._uid(elem)
            if not _values(elem):
                elem.value = self.keys.uid("medflow-dummy")
        elif vr == "PN":
            elem.value = DUMMY_PN
        elif vr in TEXT_VRS or vr in ("CS", "AE"):
            elem.value = DUMMY_TEXT
        elif vr in DUMMY_BY_VR:
            elem.value = DUMMY_BY_VR[vr]
        elif vr in BINARY_VRS:
            elem.value = b"\0" * 8
        else:
            del ds[elem.tag]

    def _uid(self, elem: DataElement) -> None:
        mapped = [
            str(v) if _is_registered(str(v)) else self.keys.uid(str(v))
            for v in _values(elem)
            if str(v).strip("\0 ")
        ]
        elem.value = mapped[0] if len(mapped) == 1 else mapped

    def _clean(self, elem: DataElement, ctx: _Context) -> None:
        vr = elem.VR
        if vr in ("DA", "DT", "TM"):
            if not self.profile.has(Option.RETAIN_LONG_MODIFIED_DATES) or vr == "TM":
                return  # full dates kept; whole-day shifts keep the time of day
            shift = shift_da if vr == "DA" else shift_dt
            moved = [shift(str(v), ctx.shift) for v in _values(elem)]
            moved = [v for v in moved if v]
            elem.value = (moved[0] if len(moved) == 1 else moved) if moved else ""
        elif vr in TEXT_VRS or vr in ("AE", "CS"):
            self._clean_text(elem, ctx)

    def _clean_text(self, elem: DataElement, ctx: _Context) -> None:
        pattern = ctx.pattern
        cleaned = [SCRUB.sub(_scrub, str(v)) for v in _values(elem)]
        if pattern is not None:
            cleaned = [pattern.sub(CLEANED, v) for v in cleaned]
        if elem.VR in ("AE", "CS", "SH") and any(CLEANED in v for v in cleaned):
            cleaned = [DUMMY_TEXT if CLEANED in v else v for v in cleaned]
        if cleaned:
            elem.value = cleaned[0] if len(cleaned) == 1 else cleaned

    # -- burned-in text (E.3.1) -------------------------------------------------------------

    def _burned_in(self, ds: Dataset, ctx: _Context) -> None:
        if (
            "PixelData" not in ds
            and "FloatPixelData" not in ds
            and "DoubleFloatPixelData" not in ds
        ):
            return
        flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        modality = str(ds.get("Modality", "") or "").strip().upper()
        risky = {m.upper() for m in self.profile.burned_in_modalities}
        image_type = (
            {str(v).strip().upper() for v in _values(ds["ImageType"])}
            if "ImageType" in ds
            else set()
        )
        why = ""
        if flag == "YES":
            why = "BurnedInAnnotation YES"
        elif str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
            why = "RecognizableVisualFeatures YES"
        elif str(ds.get("SpecimenLabelInImage", "") or "").strip().upper() == "YES":
            why = "SpecimenLabelInImage YES"
        elif image_type & {"LABEL", "OVERVIEW"}:  # slide labels and macro photos (WSI)
            why = f"a {'label' if 'LABEL' in image_type else 'overview'} image"
        elif modality in risky and flag != "NO":
            why = f"modality {modality or '?'}"
        if not why:
            return
        if self.profile.burned_in.policy == "exclude":
            raise Excluded(f"may contain burned-in text ({why}); the profile excludes such")
        if "PixelData" not in ds:
            raise Excluded(f"burned-in text ({why}) in float pixel data cannot be blanked")
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        boxes = self.profile.burned_in.boxes_for(modality, rows, columns)
        if not boxes:
            raise Excluded(
                f"burned-in text ({why}): no region configured for {modality or '?'} "
                f"{rows}x{columns}"
            )
        _blank(ds, boxes)
        log.debug("blanked %d region(s) of a %s image", len(boxes), modality or "?")
        ds.BurnedInAnnotation = "NO"
        ctx.blanked = True

    # -- marking (E.1.1) --------------------------------------------------------------------

    def _mark(self, ds: Dataset, ctx: _Context) -> None:
        _cap_age(ds)
        ds.PatientIdentityRemoved = "YES"
        chosen = sorted(self.options, key=lambda o: OPTION_CODES[o][0])
        ds.DeidentificationMethod = [
            "medflow PS3.15 Annex E Basic Profile",
            f"profile {self.profile.name}"[:64],
            *[option.value for option in chosen],
        ]
        codes = [BASIC_CODE]
        if ctx.blanked:
            codes.append(CLEAN_PIXEL_CODE)
        codes += [OPTION_CODES[o] for o in chosen]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        if self.profile.has(Option.RETAIN_LONG_MODIFIED_DATES):
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        elif self.profile.has(Option.RETAIN_LONG_FULL_DATES):
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _file_meta(self, ds: Dataset) -> FileMetaDataset:
        """Fresh file meta (PS3.10 7.1): only what the de-identified instance needs."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", old.get("MediaStorageSOPClassUID"))
        meta.MediaStorageSOPInstanceUID = ds.get(
            "SOPInstanceUID", old.get("MediaStorageSOPInstanceUID")
        )
        meta.TransferSyntaxUID = old.get("TransferSyntaxUID", ExplicitVRLittleEndian)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "MEDFLOW_DEID"
        return meta


def _blank(ds: Dataset, boxes: list[tuple[int, int, int, int]]) -> None:
    """Blank ``boxes`` in every frame of ``ds``'s pixels; written Explicit VR Little Endian.
    :class:`Excluded` when the pixels cannot be decoded."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    syntax = UID(str(meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    meta.TransferSyntaxUID = syntax
    try:
        if int(ds.BitsAllocated) == 1:
            raise Excluded("burned-in text in 1-bit pixel data cannot be blanked")
        if syntax.is_compressed:
            ds.decompress(generate_instance_uid=False)
        pixels = np.array(ds.pixel_array, copy=True)
    except Excluded:
        raise
    except READ_ERRORS as exc:
        raise Excluded(f"burned-in text; pixels cannot be decoded ({type(exc).__name__})") from None
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        ds.PhotometricInterpretation = "RGB"  # pydicom's pixel_array converts YBR to RGB
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0  # pixel_array is colour-by-pixel
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = pixels if frames > 1 else pixels[np.newaxis]
    monochrome1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    fill = pixels.max() if monochrome1 else pixels.min()
    for x, y, width, height in boxes:
        view[:, y : y + height, x : x + width, ...] = fill
    ds.PixelData = view.tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _cap_age(ds: Dataset) -> None:
    """A kept Patient's Age (0010,1010; AS, PS3.5 6.2) over 89 years becomes ``090Y``: ages
    over 89 are one group (HIPAA Safe Harbor), as FHIR birth dates are grouped."""
    age = str(ds.get("PatientAge") or "").strip()
    if len(age) == 4 and age[:3].isdigit() and age[3] == "Y" and int(age[:3]) > 89:
        ds.PatientAge = "090Y"


__all__ = ["DicomDeidentifier", "DicomdirSkipped", "Excluded", "shift_da", "shift_dt"]
