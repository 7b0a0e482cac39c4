"""The training manifest: exact schema, patient-disjoint seeded splits that stay put when
patients are added, byte-identical output, metadata with the rows' SHA-256; label set
definitions validated."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from medflow.labels.manifest import (
    COLUMNS,
    ManifestRow,
    assign_splits,
    build_table,
    manifest_metadata,
    parse_split,
    read_manifest,
    write_manifest,
)
from medflow.labels.schemas import LabelRequest, LabelSetDefinition

EXPECTED = (
    "sop_instance_uid",
    "frame",
    "study_uid",
    "series_uid",
    "patient_id",
    "label",
    "value",
    "roi",
    "source_uid",
    "label_set",
    "label_set_version",
    "split",
)


def rows(patients: int = 40) -> list[ManifestRow]:
    out = []
    for p in range(patients):
        for i in range(3):
            roi = '{"points":[[1,2],[3,4]],"type":"box"}' if i == 0 else None
            out.append(
                ManifestRow(
                    f"P{p:03d}",
                    f"1.2.{p}",
                    f"1.2.{p}.1",
                    f"1.2.{p}.1.{i}",
                    1,
                    "pneumothorax" if p % 3 else "normal",
                    1 if p % 3 else 0,
                    roi,
                    "" if p % 3 == 0 else f"9.9.{p}",
                )
            )
    return out


def write(path: Path, data: list[ManifestRow], seed: int = 7) -> Path:
    table = build_table(data, label_set="cxr", version=2, seed=seed, fractions=(0.7, 0.15, 0.15))
    write_manifest(table, path)
    return path


def test_schema_is_exact_and_read_back(tmp_path: Path) -> None:
    assert COLUMNS == EXPECTED
    table = read_manifest(write(tmp_path / "m.parquet", rows()))
    assert table.column_names == list(EXPECTED)
    assert str(table.schema.field("frame").type) == "int64"
    first = table.to_pylist()[0]
    assert first["label_set"] == "cxr" and first["label_set_version"] == 2
    meta = manifest_metadata(tmp_path / "m.parquet")
    assert meta["label_set"] == "cxr" and meta["label_set_version"] == "2"
    assert meta["seed"] == "7" and len(meta["rows_sha256"]) == 64 and meta["rows"] == "120"


def test_byte_identical_whatever_the_input_order(tmp_path: Path) -> None:
    data = rows()
    a = write(tmp_path / "a.parquet", data).read_bytes()
    b = write(tmp_path / "b.parquet", list(reversed(data)) + data[:5]).read_bytes()
    assert a == b
    assert write(tmp_path / "c.parquet", data, seed=8).read_bytes() != a


def test_splits_are_patient_disjoint_and_near_the_fractions(tmp_path: Path) -> None:
    table = pq.read_table(write(tmp_path / "m.parquet", rows(100)))
    by_patient: dict[str, set[str]] = {}
    for row in table.to_pylist():
        by_patient.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = {s: sum(1 for v in by_patient.values() if s in v) for s in ("train", "val", "test")}
    # a draw per patient: near the fractions (binomial sd ~4.6 for 70 %, ~3.6 for 15 %)
    assert abs(counts["train"] - 70) <= 10 and counts["val"] > 0 and counts["test"] > 0
    assert sum(counts.values()) == 100


def test_adding_patients_never_moves_earlier_ones(tmp_path: Path) -> None:
    """Stable splits: an export with one more patient leaves every earlier patient in the
    split it had (no test patient of an earlier manifest drifts into train)."""

    def splits(data: list[ManifestRow]) -> dict[str, str]:
        table = build_table(data, label_set="cxr", version=2, seed=7, fractions=(0.7, 0.15, 0.15))
        return {r["patient_id"]: r["split"] for r in table.to_pylist()}

    for n in range(20, 45):
        before, after = splits(rows(n)), splits(rows(n + 1))
        assert len(after) == n + 1
        assert {p: after[p] for p in before} == before, f"a patient moved when adding #{n + 1}"


def test_split_is_a_function_of_seed_patient_and_fractions() -> None:
    ids = [f"ID{i}" for i in range(2000)]
    whole = assign_splits(ids, seed=3, fractions=(0.7, 0.15, 0.15))
    alone = {p: assign_splits([p], seed=3, fractions=(0.7, 0.15, 0.15))[p] for p in ids[:200]}
    assert alone == {p: whole[p] for p in ids[:200]}
    counts = {s: list(whole.values()).count(s) for s in ("train", "val", "test")}
    # binomial sd: ~20 for train (1,400), ~16 for val and test (300)
    assert abs(counts["train"] - 1400) < 80
    assert abs(counts["val"] - 300) < 64 and abs(counts["test"] - 300) < 64
    other_seed = assign_splits(ids, seed=4, fractions=(0.7, 0.15, 0.15))
    assert other_seed != whole
    no_test = assign_splits(ids, seed=3, fractions=(0.6, 0.4, 0.0))
    assert set(no_test.values()) == {"train", "val"}
    assert set(assign_splits(ids, seed=3, fractions=(1.0, 0.0, 0.0)).values()) == {"train"}


def test_splits_ignore_the_input_order() -> None:
    before = assign_splits([f"P{i}" for i in range(200)], seed=1, fractions=(0.7, 0.15, 0.15))
    same = assign_splits(
        reversed([f"P{i}" for i in range(200)]), seed=1, fractions=(0.7, 0.15, 0.15)
    )
    assert before == same


def test_tampered_rows_are_detected(tmp_path: Path) -> None:
    path = write(tmp_path / "m.parquet", rows(5))
    table = pq.read_table(path)
    pq.write_table(table.slice(1), tmp_path / "t.parquet")  # same metadata, a row less
    with pytest.raises(ValueError, match="SHA-256"):
        read_manifest(tmp_path / "t.parquet")


@pytest.mark.parametrize("text", ["0.7,0.3", "0.5,0.5,0.5", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_splits(text: str) -> None:
    with pytest.raises(ValueError, match="split"):
        parse_split(text)


def test_label_set_definitions_are_checked() -> None:
    ok = LabelSetDefinition.model_validate(
        {
            "name": "cxr",
            "classes": [
                {"name": "normal"},
                {
                    "name": "pnx",
                    "code": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"},
                },
            ],
            "negative_class": "normal",
        }
    )
    assert ok.index("pnx") == 1 and ok.classes[0].concept().scheme == "99MEDFLOW"
    for bad in (
        {"name": "x", "classes": []},
        {"name": "x", "classes": [{"name": "a"}, {"name": "a"}]},
        {"name": "x", "classes": [{"name": "a"}], "negative_class": "b"},
        {"name": "bad name", "classes": [{"name": "a"}]},
    ):
        with pytest.raises(ValidationError):
            LabelSetDefinition.model_validate(bad)


def test_label_request_kind() -> None:
    base = {"label_set": "s", "label": "a", "study_uid": "1.2"}
    assert LabelRequest.model_validate(base).resolved_kind() == "kos"
    roi = {"type": "point", "points": [[1, 2]]}
    assert LabelRequest.model_validate({**base, "roi": roi}).resolved_kind() == "sr"
    assert LabelRequest.model_validate({**base, "mask": [[0, 1]]}).resolved_kind() == "seg"
    with pytest.raises(ValidationError):
        LabelRequest.model_validate({**base, "roi": {"type": "box", "points": [[1, 2]]}})
