"""A metadata-only index of N instances (default 1M), loaded straight into a medflow data dir.

10 series x 10 instances per study (N/100 studies), with the demographic model of ``_corpus``
(same names, dates, modality mix), so the QIDO queries select similar fractions at every size.
The schema comes from medflow's own migrations (``create_engine`` + ``upgrade``); rows go in
through sqlite3 ``executemany`` with the secondary indexes dropped during the load and rebuilt
after. Instances have no blobs: ``blob_key``/``sha256``/``size``/``metadata_json`` hold small
plausible values; QIDO never reads blobs. The change feed is left empty (QIDO does not read it).
The result is cached under ``bench/.cache/`` keyed by N, seed and the migration files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _corpus import SOP_CLASS, StudyInfo, patient_pool_size, study_info

LOADER_VERSION = 1
SERIES_PER_STUDY = 10
INSTANCES_PER_SERIES = 10
KIND = "million"
TS = "1.2.840.10008.1.2.1"


def _schema_key() -> str:
    from medflow.db import engine as mf_engine

    versions = sorted((mf_engine.MIGRATIONS / "versions").glob("*.py"))
    h = hashlib.sha256()
    for p in versions:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def million_dir(cache: Path, n: int, seed: int) -> Path:
    return cache / f"million-v{LOADER_VERSION}-seed{seed}-n{n}-schema{_schema_key()}"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _metadata(
    info: StudyInfo, series_uid: str, sop: str, sop_class: str, num: int, mod: str
) -> str:
    ds: dict[str, Any] = {
        "00080016": {"vr": "UI", "Value": [sop_class]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080020": {"vr": "DA", "Value": [info.study_date]},
        "00080050": {"vr": "SH", "Value": [info.accession]},
        "00080060": {"vr": "CS", "Value": [mod]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": info.patient_name}]},
        "00100020": {"vr": "LO", "Value": [info.patient_id]},
        "0020000D": {"vr": "UI", "Value": [info.study_uid]},
        "0020000E": {"vr": "UI", "Value": [series_uid]},
        "00200013": {"vr": "IS", "Value": [num]},
        "00280010": {"vr": "US", "Value": [512]},
        "00280011": {"vr": "US", "Value": [512]},
        "00280100": {"vr": "US", "Value": [16]},
        "7FE00010": {
            "vr": "OW",
            "BulkDataURI": f"studies/{info.study_uid}/series/{series_uid}/instances/{sop}"
            "/bulkdata/7FE00010",
        },
    }
    return json.dumps(ds, separators=(",", ":"))


def _columns(con: sqlite3.Connection, table: str) -> dict[str, tuple[bool, bool]]:
    """name -> (NOT NULL without default, is primary key)."""
    rows = con.execute(f"PRAGMA table_info({table})").fetchall()
    return {r[1]: (bool(r[3]) and r[4] is None, bool(r[5])) for r in rows}


class _Inserter:
    """executemany into the columns the table has, refusing to leave a NOT NULL one empty."""

    def __init__(self, con: sqlite3.Connection, table: str, known: list[str]) -> None:
        cols = _columns(con, table)
        missing = [c for c, (notnull, pk) in cols.items() if notnull and not pk and c not in known]
        if missing:
            raise RuntimeError(f"loader does not fill NOT NULL {table} columns {missing}")
        self.use = [c for c in known if c in cols]
        self.idx = [known.index(c) for c in self.use]
        self.sql = (
            f"INSERT INTO {table} ({', '.join(self.use)}) VALUES ({', '.join('?' * len(self.use))})"
        )
        self.con = con
        self.buf: list[tuple[Any, ...]] = []

    def add(self, row: tuple[Any, ...]) -> None:
        self.buf.append(tuple(row[i] for i in self.idx))
        if len(self.buf) >= 20_000:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.con.executemany(self.sql, self.buf)
            self.buf.clear()


STUDY_COLS = [
    "pk", "study_uid", "patient_id", "issuer_of_patient_id", "patient_name",
    "patient_name_search", "patient_birth_date", "patient_sex", "study_date", "study_time",
    "accession_number", "referring_physician_name", "referring_physician_name_search", "study_id",
    "study_description", "specific_character_set", "timezone_offset", "created_at", "updated_at",
    "num_series", "num_instances", "modalities_in_study",
]  # fmt: skip
SERIES_COLS = [
    "pk", "study_pk", "series_uid", "modality", "series_number", "series_description",
    "body_part_examined", "performed_procedure_step_start_date",
    "performed_procedure_step_start_time", "scheduled_procedure_step_id",
    "requested_procedure_id", "specific_character_set", "timezone_offset", "created_at",
    "updated_at", "num_instances",
]  # fmt: skip
INSTANCE_COLS = [
    "pk", "study_pk", "series_pk", "sop_instance_uid", "sop_class_uid", "instance_number",
    "transfer_syntax_uid", "rows", "columns", "bits_allocated", "number_of_frames",
    "specific_character_set", "timezone_offset", "pixel_data_offset", "pixel_data_length", "size",
    "sha256", "blob_key", "metadata_json", "created_at", "updated_at",
]  # fmt: skip
TOKEN_COLS = ["study_pk", "attr", "token"]


def _modality(study_modality: str, series_index: int) -> str:
    """PET studies alternate PT and CT series (PET/CT); others keep one modality."""
    return "CT" if study_modality == "PT" and series_index % 2 else study_modality


def _studies(n_studies: int, seed: int) -> Iterator[tuple[int, StudyInfo]]:
    pool = patient_pool_size(n_studies)
    for s in range(n_studies):
        yield s + 1, study_info(seed, KIND, s, pool)


def load(data_dir: Path, *, n: int, seed: int, progress: bool = True) -> dict[str, float]:
    """Create ``data_dir/index.sqlite3`` with ``n`` instances; returns counts and seconds."""
    from medflow.db.engine import create_engine, upgrade
    from medflow.dicom.attributes import name_tokens, search_form

    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    db = data_dir / "index.sqlite3"
    engine = create_engine(f"sqlite:///{db}")
    upgrade(engine)
    engine.dispose()

    t0 = time.perf_counter()
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1000000")
    con.execute("PRAGMA foreign_keys=OFF")
    dropped = con.execute(
        "SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
        "AND tbl_name IN ('study','series','instance','person_name_token')"
    ).fetchall()
    for name, _sql in dropped:
        con.execute(f'DROP INDEX "{name}"')
    con.execute("BEGIN")
    ins_study = _Inserter(con, "study", STUDY_COLS)
    ins_series = _Inserter(con, "series", SERIES_COLS)
    ins_inst = _Inserter(con, "instance", INSTANCE_COLS)
    ins_tok = _Inserter(con, "person_name_token", TOKEN_COLS)
    stamp = _stamp()
    n_studies = max(1, n // (SERIES_PER_STUDY * INSTANCES_PER_SERIES))
    series_pk = inst_pk = 0
    for study_pk, info in _studies(n_studies, seed):
        modalities = sorted({_modality(info.modality, se) for se in range(SERIES_PER_STUDY)})
        ins_study.add((
            study_pk, info.study_uid, info.patient_id, None, info.patient_name,
            search_form(info.patient_name), info.birth_date, info.sex, info.study_date,
            info.study_time, info.accession, info.referring, search_form(info.referring),
            str(study_pk), info.description, "ISO_IR 100", None, stamp, stamp,
            SERIES_PER_STUDY, SERIES_PER_STUDY * INSTANCES_PER_SERIES, "\\".join(modalities),
        ))  # fmt: skip
        for attr, value in (("00100010", info.patient_name), ("00080090", info.referring)):
            for token in sorted(name_tokens(value)):
                ins_tok.add((study_pk, attr, token))
        for se in range(SERIES_PER_STUDY):
            series_pk += 1
            mod = _modality(info.modality, se)
            series_uid = f"{info.study_uid}.{se + 1}"
            ins_series.add((
                series_pk, study_pk, series_uid, mod, se + 1, f"{mod} series {se + 1}",
                info.body_part, info.study_date, info.study_time, None, None, "ISO_IR 100",
                None, stamp, stamp, INSTANCES_PER_SERIES,
            ))  # fmt: skip
            sop_class = SOP_CLASS[mod]
            for k in range(INSTANCES_PER_SERIES):
                inst_pk += 1
                sop = f"{series_uid}.{k + 1}"
                sha = hashlib.sha256(sop.encode()).hexdigest()
                ins_inst.add((
                    inst_pk, study_pk, series_pk, sop, sop_class, k + 1, TS, 512, 512, 16, None,
                    "ISO_IR 100", None, 1200, 524288, 525500, sha,
                    f"{info.study_uid}/{series_uid}/{sop}.{sha[:16]}.dcm",
                    _metadata(info, series_uid, sop, sop_class, k + 1, mod), stamp, stamp,
                ))  # fmt: skip
        if progress and study_pk % 1000 == 0:
            print(f"  1M index: {inst_pk:,}/{n:,} instances", flush=True)
    for ins in (ins_study, ins_series, ins_inst, ins_tok):
        ins.flush()
    con.execute("COMMIT")
    t_rows = time.perf_counter() - t0
    for _name, sql in dropped:
        con.execute(sql)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    elapsed = time.perf_counter() - t0
    return {
        "studies": n_studies,
        "series": series_pk,
        "instances": inst_pk,
        "rows_s": round(t_rows, 1),
        "total_s": round(elapsed, 1),
        "db_mb": round(db.stat().st_size / 1e6, 1),
    }


def ensure(cache: Path, *, n: int, seed: int) -> tuple[Path, dict[str, float] | None]:
    """The cached data dir for ``n`` (built when absent); stats when it was just built."""
    folder = million_dir(cache, n, seed)
    done = folder / "LOADED.json"
    if done.exists():
        return folder, None
    stats = load(folder, n=n, seed=seed)
    done.write_text(json.dumps(stats))
    return folder, stats


def query_values(seed: int, kind: str, n_studies: int) -> dict[str, str]:
    """A PatientID that exists in corpus ``kind`` (of the study in the middle)."""
    info = study_info(seed, kind, n_studies // 2, patient_pool_size(n_studies))
    return {"PatientID": info.patient_id}


__all__ = ["ensure", "load", "million_dir", "query_values"]
