"""Label sets, label requests and import mappings (pydantic I/O of the labels context)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
Scope = Literal["study", "series", "instance"]
RegionType = Literal["none", "box", "polygon", "point"]
MEDFLOW_SCHEME = "99MEDFLOW"
"""Coding scheme of class codes a label set does not give (private, PS3.16 8.2)."""


DocumentKind = Literal["KOS", "SR", "SEG", "GSPS"]


def _no_region() -> list[RegionType]:
    return ["none"]


def _all_kinds() -> list[DocumentKind]:
    return ["KOS", "SR", "SEG", "GSPS"]


class Code(BaseModel):
    """A coded concept: scheme designator, code value, code meaning (DICOM names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scheme: str = Field(min_length=1, max_length=16)
    value: str = Field(min_length=1, max_length=64)
    meaning: str = Field(default="", max_length=64)

    @property
    def key(self) -> tuple[str, str]:
        """What matching compares: (scheme, value), never the meaning."""
        return (self.scheme.upper(), self.value)


class LabelClass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    code: Code | None = None

    def concept(self) -> Code:
        """The class's code, or a private one named after the class."""
        return self.code or Code(scheme=MEDFLOW_SCHEME, value=self.name[:64], meaning=self.name)


FOR_TEACHING = Code(scheme="DCM", value="113004", meaning="For Teaching")


class LabelSetDefinition(BaseModel):
    """One version of a label set. ``negative_class`` names the class that means "no
    finding" (what a mapping-implied negative becomes); ``kos_title`` is the CID 7010 title
    of the Key Object Selection documents written for the set."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    description: str = ""
    classes: list[LabelClass] = Field(min_length=1)
    scope: Scope = "instance"
    region_types: list[RegionType] = Field(default_factory=_no_region, min_length=1)
    negative_class: str | None = None
    kos_title: Code = FOR_TEACHING

    @model_validator(mode="after")
    def _consistent(self) -> LabelSetDefinition:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        keys = [c.concept().key for c in self.classes]
        if len(set(keys)) != len(keys):
            raise ValueError("class codes must be unique")
        if self.negative_class is not None and self.negative_class not in names:
            raise ValueError(f"negative_class {self.negative_class!r} is not a class")
        return self

    def index(self, name: str) -> int:
        """The class's index (the manifest's ``value``); ValueError when unknown."""
        return [c.name for c in self.classes].index(name)

    def label_class(self, name: str) -> LabelClass:
        return self.classes[self.index(name)]


class Roi(BaseModel):
    """A planar region in pixel coordinates (column, row): a box is two corners
    ``[[x0, y0], [x1, y1]]``, a polygon three or more vertices (not repeated), a point one."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["box", "polygon", "point"]
    points: list[tuple[float, float]]

    @model_validator(mode="after")
    def _shape(self) -> Roi:
        need = {"box": (2, 2), "polygon": (3, 10_000), "point": (1, 1)}[self.type]
        if not need[0] <= len(self.points) <= need[1]:
            raise ValueError(f"a {self.type} needs {need[0]}..{need[1]} points")
        return self


class LabelRequest(BaseModel):
    """One label to write. ``kind`` defaults to ``seg`` with a mask, ``sr`` with a region,
    ``kos`` otherwise. The target is the study, or a series, or an instance in it."""

    model_config = ConfigDict(extra="forbid")
    label_set: str
    label: str
    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    frame: int = Field(default=1, ge=1)
    kind: Literal["kos", "sr", "seg"] | None = None
    roi: Roi | None = None
    mask: list[list[int]] | None = None
    """A binary mask (rows x columns of the instance's frame) for a SEG."""
    observer: str | None = Field(default=None, max_length=64)
    provenance: Literal["outcome"] | None = None
    """Where the label comes from when no reader gave it: ``outcome`` (the feedback loop:
    a pathology report or a Condition that came later). Recorded in the document: its
    observer is the device "medflow outcome" (TID 1004), not a person."""
    replaces: list[str] = Field(default_factory=list, max_length=100)
    """SOP Instance UIDs of earlier label documents of the same set and study that this one
    supersedes: removed from the archive and the index once the new one is stored (a reader
    changing a class in the labeling UI)."""

    @field_validator("mask")
    @classmethod
    def _rectangular(cls, mask: list[list[int]] | None) -> list[list[int]] | None:
        if mask is not None and (not mask or len({len(r) for r in mask}) != 1):
            raise ValueError("the mask must be a non-empty rectangle of 0/1 values")
        return mask

    def resolved_kind(self) -> Literal["kos", "sr", "seg"]:
        if self.kind is not None:
            return self.kind
        return "seg" if self.mask is not None else "sr" if self.roi is not None else "kos"


class CodeMatch(BaseModel):
    """A code to match: scheme (optional) and value; meanings are never compared."""

    model_config = ConfigDict(extra="forbid")
    scheme: str | None = None
    value: str

    def matches(self, key: tuple[str, str]) -> bool:
        return key[1] == self.value and (self.scheme is None or key[0] == self.scheme.upper())


class MappingRule(BaseModel):
    """Documents (or their findings) with every given code mean ``label``: ``title`` the
    document title (KOS, SR), ``concept`` any coded concept in it (a KOS title modifier, an
    SR qualitative evaluation or finding type, a SEG segmented property type), ``text`` a
    GSPS text annotation or graphic layer (case-insensitive, GSPS carries no codes)."""

    model_config = ConfigDict(extra="forbid")
    label: str
    title: CodeMatch | None = None
    concept: CodeMatch | None = None
    text: str | None = None

    @model_validator(mode="after")
    def _something(self) -> MappingRule:
        if self.title is None and self.concept is None and self.text is None:
            raise ValueError("a rule needs a title, a concept or a text")
        return self


class Negatives(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    label: str | None = None
    """The class a study without any KOS becomes (default: the set's negative_class)."""
    modalities: list[str] = Field(default_factory=list)
    """Only studies with one of these modalities (empty: any)."""


class Mapping(BaseModel):
    """What codes in others' documents mean (``medflow labels import --mapping FILE``)."""

    model_config = ConfigDict(extra="forbid")
    label_set: str | None = None
    rules: list[MappingRule] = Field(default_factory=list)
    negatives: Negatives = Field(default_factory=Negatives)
    kinds: list[DocumentKind] = Field(default_factory=_all_kinds)
