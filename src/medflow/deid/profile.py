"""De-identification profiles for DICOM: PS3.15 Annex E, the Basic Application Level
Confidentiality Profile (E.1) and its options (E.3.1-E.3.11), and the action table
(Table E.1-1) they select actions from.

A :class:`DicomProfile` names the options it applies, the safe private attributes it may keep
(with ``retain-safe-private``, PS3.15 E.3.10) and its burned-in annotation policy (E.3.1, Clean
Pixel Data: medflow either excludes such instances or blanks configured regions). It loads from
a YAML or JSON file or by preset name (:func:`load_profile`).

:class:`ActionTable` is Table E.1-1 as shipped in ``data/ps3_15_e1_1.json`` (derived from the
standard by ``scripts/gen_deid_profile.py``); :meth:`ActionTable.action` resolves the action of
an attribute under a set of options.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medflow.core.errors import InvalidInput


class Option(StrEnum):
    """The options of the Basic Profile (PS3.15 E.3; Table E.1-1 columns)."""

    RETAIN_LONG_FULL_DATES = "retain-long-full-dates"
    RETAIN_LONG_MODIFIED_DATES = "retain-long-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"


OPTION_CODES: dict[Option, tuple[str, str]] = {
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONG_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONG_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}
"""CID 7050 (De-identification Method) codes of the options, scheme DCM."""
BASIC_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")

Action = Literal["X", "Z", "D", "K", "C", "U"]


def resolve_combined(code: str) -> Action:
    """One action for a Table E.1-1 code. Combined codes (``X/Z``, ``X/D``, ``Z/D``,
    ``X/Z/D``, ``X/Z/U*``) depend on the IOD's attribute type (E.1.1); without that knowledge
    medflow picks the action that keeps any IOD valid and leaks nothing: D if the code contains
    D, else U if it contains U, else Z if it contains Z."""
    parts = {part.rstrip("*") for part in code.split("/")}
    order: tuple[Action, ...] = ("D", "U", "Z", "X", "K", "C")
    for choice in order:
        if choice in parts:
            return choice
    raise InvalidInput(f"unknown Table E.1-1 action {code!r}")


class ActionTable:
    """Table E.1-1: the action of each listed attribute under a set of options."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self._exact: dict[int, dict[str, Any]] = {}
        self._overlay: dict[int, dict[str, Any]] = {}
        self._curve: dict[str, Any] | None = None
        self._private: dict[str, Any] | None = None
        for row in rows:
            tag = row["tag"]
            if "ODD" in tag:
                self._private = row
            elif tag.startswith("(50XX"):
                self._curve = row
            elif tag.startswith("(60XX"):
                self._overlay[int(tag[6:10], 16)] = row
            else:
                self._exact[int(tag[1:5] + tag[6:10], 16)] = row

    @classmethod
    @cache
    def standard(cls) -> ActionTable:
        """The shipped Table E.1-1 (``medflow/deid/data/ps3_15_e1_1.json``)."""
        text = resources.files("medflow.deid").joinpath("data/ps3_15_e1_1.json").read_text()
        return cls(json.loads(text)["rows"])

    def row(self, tag: int) -> dict[str, Any] | None:
        """The row of ``tag`` (a 32-bit tag), patterns and the private row included."""
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2 == 1:
            return self._private
        if group & 0xFF00 == 0x5000 and self._curve is not None:
            return self._curve
        if group & 0xFF00 == 0x6000 and element in self._overlay:
            return self._overlay[element]
        return self._exact.get(tag)

    def action(self, tag: int, options: frozenset[Option]) -> Action | None:
        """The action for ``tag`` under ``options``; None when the table does not list it.

        An option's column overrides the basic action of its rows (E.3). Where two chosen
        options name a row, C (clean/modify) wins over K, so e.g. a calibration date under
        retain-device-identity and retain-long-modified-dates is shifted, not kept."""
        row = self.row(tag)
        if row is None:
            return None
        chosen = [code for name, code in row["options"].items() if Option(name) in options]
        if chosen:
            return "C" if "C" in chosen else resolve_combined(chosen[0])
        return resolve_combined(row["basic"])

    def is_descriptor(self, tag: int) -> bool:
        """Whether the table cleans the attribute under clean-descriptors, clean-structured-
        content or clean-graphics (free text, not an identity)."""
        row = self.row(tag)
        return row is not None and any(
            name in row["options"]
            for name in ("clean-descriptors", "clean-structured-content", "clean-graphics")
        )


Box = tuple[int, int, int, int]


class BurnedInRegion(BaseModel):
    """Regions to blank in images of one modality (and size, when given): ``[x, y, width,
    height]`` boxes in pixels from the top-left corner."""

    model_config = ConfigDict(extra="forbid")

    modality: str
    rows: int | None = Field(default=None, ge=1)
    columns: int | None = Field(default=None, ge=1)
    boxes: list[Box] = Field(min_length=1)

    @field_validator("boxes")
    @classmethod
    def _positive(cls, boxes: list[Box]) -> list[Box]:
        for x, y, width, height in boxes:
            if x < 0 or y < 0 or width <= 0 or height <= 0:
                raise ValueError("a box is [x, y, width, height] with x, y >= 0 and sizes > 0")
        return boxes


class BurnedInPolicy(BaseModel):
    """What to do with instances that may carry burned-in text (PS3.15 E.3.1): ``exclude``
    them (the default) or ``blank`` the configured regions."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["exclude", "blank"] = "exclude"
    regions: list[BurnedInRegion] = Field(default_factory=list)

    def boxes_for(self, modality: str, rows: int, columns: int) -> list[Box]:
        """The boxes configured for ``modality`` at ``rows`` x ``columns`` (empty if none)."""
        for region in self.regions:
            if region.modality.upper() != modality.upper():
                continue
            if region.rows not in (None, rows) or region.columns not in (None, columns):
                continue
            return list(region.boxes)
        return []


class SafePrivate(BaseModel):
    """One private attribute that may be kept under retain-safe-private: its private creator,
    (odd) group and element byte (the low byte of the element, PS3.5 7.8.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    creator: str
    group: int
    element: int = Field(ge=0, le=0xFF)

    @field_validator("group", "element", mode="before")
    @classmethod
    def _hex(cls, value: Any) -> Any:
        if isinstance(value, str):
            return int(value.removeprefix("0x"), 16)
        return value

    @field_validator("group")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0 or not 0x0009 <= value <= 0xFFFF:
            raise ValueError("a private group is odd, 0009..FFFF")
        return value


class DicomProfile(BaseModel):
    """A DICOM de-identification profile: the Basic Profile plus ``options`` (PS3.15 E.3)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    options: frozenset[Option] = frozenset()
    safe_private: list[SafePrivate] = Field(default_factory=list)
    burned_in: BurnedInPolicy = Field(default_factory=BurnedInPolicy)
    burned_in_modalities: list[str] = Field(default_factory=lambda: ["US", "SC", "OT", "XC", "ES"])

    @field_validator("safe_private", mode="before")
    @classmethod
    def _tuples(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [
                dict(zip(("creator", "group", "element"), item, strict=True))
                if isinstance(item, list | tuple)
                else item
                for item in value
            ]
        return value

    @model_validator(mode="after")
    def _exclusive_dates(self) -> DicomProfile:
        both = {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES}
        if both <= self.options:
            raise ValueError(
                "retain-long-full-dates and retain-long-modified-dates are mutually exclusive"
            )
        return self

    def has(self, option: Option) -> bool:
        """Whether the profile applies ``option``."""
        return option in self.options

    def is_safe_private(self, creator: str, group: int, element_byte: int) -> bool:
        """Whether a private attribute is safe-listed (only with retain-safe-private)."""
        if not self.has(Option.RETAIN_SAFE_PRIVATE):
            return False
        return any(
            item.creator.strip() == creator.strip()
            and item.group == group
            and item.element == element_byte
            for item in self.safe_private
        )


PRESETS: dict[str, dict[str, Any]] = {
    "basic": {"name": "basic", "options": []},
    "research": {
        "name": "research",
        "options": [
            Option.RETAIN_LONG_MODIFIED_DATES,
            Option.RETAIN_PATIENT_CHARACTERISTICS,
            Option.CLEAN_DESCRIPTORS,
            Option.CLEAN_STRUCTURED_CONTENT,
            Option.CLEAN_GRAPHICS,
        ],
    },
}
"""Named profiles: ``basic`` (E.1 alone) and ``research`` (modified dates, patient
characteristics, clean descriptors, structured content and graphics)."""


def parse_profile(data: Any, *, source: str = "profile") -> DicomProfile:
    """A profile from parsed YAML/JSON; :class:`InvalidInput` naming the bad fields."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a profile is a mapping")
    try:
        return DicomProfile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidInput(f"{source}: invalid profile: {problems}") from None


def load_profile(name_or_path: str | Path) -> DicomProfile:
    """A preset by name (``basic``, ``research``) or a profile from a YAML or JSON file."""
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        return DicomProfile.model_validate(PRESETS[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise InvalidInput(
            f"no profile {str(name_or_path)!r}: not a preset ({', '.join(PRESETS)}) nor a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(f"{path.name}: cannot read the profile: {exc}") from None
    return parse_profile(data, source=path.name)


__all__ = [
    "BASIC_CODE",
    "CLEAN_PIXEL_CODE",
    "OPTION_CODES",
    "PRESETS",
    "ActionTable",
    "BurnedInPolicy",
    "BurnedInRegion",
    "DicomProfile",
    "Option",
    "SafePrivate",
    "load_profile",
    "parse_profile",
    "resolve_combined",
]
