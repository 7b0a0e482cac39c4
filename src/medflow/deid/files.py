"""De-identification of a folder of DICOM files (PS3.15 Annex E through
:class:`medflow.deid.dicom.DicomDeidentifier`), keeping the input's relative layout.

The output folder receives only de-identified DICOM instances: other files are skipped, and so
are DICOMDIRs (their directory records carry names and IDs; rebuild one from the output
instead). Excluded and failed files are listed with their reasons in a JSON report, written
outside the output folder so that it never travels with the de-identified data.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medflow.core.errors import InvalidInput
from medflow.deid.dicom import DicomDeidentifier, DicomdirSkipped, Excluded

log = logging.getLogger(__name__)

Progress = Callable[[int, str], None]
"""Called after each file with the count so far and the file's relative path."""


@dataclass
class DeidSummary:
    """What :func:`deidentify_tree` did; ``excluded``/``failed`` list (relative path, reason)."""

    written: int = 0
    skipped: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, why) of the skipped files (the report lists them)."""
    excluded: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        """One line for people: the counts (no paths: they may carry names)."""
        return (
            f"{self.written} de-identified, {self.skipped} skipped (not DICOM or DICOMDIR), "
            f"{len(self.excluded)} excluded, {len(self.failed)} failed"
        )

    def as_report(self) -> dict[str, object]:
        """The JSON report: counts and each skipped, excluded or failed file with its
        reason."""
        data = asdict(self)
        return {
            "counts": {
                "written": self.written,
                "skipped": self.skipped,
                "excluded": len(self.excluded),
                "failed": len(self.failed),
            },
            "skipped": [{"path": p, "reason": r} for p, r in data["skipped_files"]],
            "excluded": [{"path": p, "reason": r} for p, r in data["excluded"]],
            "failed": [{"path": p, "reason": r} for p, r in data["failed"]],
        }


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _looks_like_dicom(path: Path) -> bool:
    """A Part-10 preamble and ``DICM`` prefix (PS3.10 7.1); DICOMDIRs are skipped by name."""
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def deidentify_tree(
    src: Path,
    dst: Path,
    deidentifier: DicomDeidentifier,
    report: Path | None = None,
    progress: Progress | None = None,
) -> DeidSummary:
    """De-identify every DICOM file under ``src`` into ``dst`` (same relative paths; a single
    file ``src`` goes to ``dst/<its name>``).

    Refuses ``dst`` inside ``src`` or ``src`` inside ``dst`` and a ``report`` inside ``dst``
    (:class:`InvalidInput`). Non-DICOM files and DICOMDIRs are skipped (counted); instances
    excluded for burned-in text or that fail to parse are listed in the summary and report."""
    src, dst = src.resolve(), dst.resolve()
    if not src.exists():
        raise InvalidInput(f"input {src} does not exist")
    if _inside(dst, src) or _inside(src, dst):
        raise InvalidInput("the output folder must be neither inside nor around the input")
    if report is not None and _inside(report.resolve(), dst):
        raise InvalidInput("the report must be written outside the de-identified output folder")
    summary = DeidSummary()
    count = 0
    if src.is_file():
        _one(src, dst / src.name, src.name, deidentifier, summary)
        count = 1
        if progress is not None:
            progress(count, src.name)
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(src).as_posix()
            count += 1
            _one(path, dst / rel, rel, deidentifier, summary)
            if progress is not None:
                progress(count, rel)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary.as_report(), indent=1), encoding="utf-8")
    log.info(
        "de-identified %d files (%d skipped, %d excluded, %d failed)",
        summary.written,
        summary.skipped,
        len(summary.excluded),
        len(summary.failed),
    )
    return summary


def _one(
    path: Path, target: Path, rel: str, deidentifier: DicomDeidentifier, summary: DeidSummary
) -> None:
    if not _looks_like_dicom(path):
        summary.skipped += 1
        summary.skipped_files.append(
            (rel, "not a DICOM Part-10 file (no DICM prefix) or a DICOMDIR")
        )
        return
    try:
        out = deidentifier.deidentify_bytes(path.read_bytes())
    except DicomdirSkipped:
        summary.skipped += 1
        summary.skipped_files.append((rel, "a DICOMDIR (its records hold PHI): rebuild it"))
        return
    except Excluded as exc:
        summary.excluded.append((rel, exc.reason))
        return
    except InvalidInput as exc:
        summary.failed.append((rel, exc.message))
        return
    except OSError as exc:
        summary.failed.append((rel, f"cannot read ({type(exc).__name__})"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(out)
    partial.replace(target)
    summary.written += 1


__all__ = ["DeidSummary", "Progress", "deidentify_tree"]
