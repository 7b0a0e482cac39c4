"""The sync's cursor and dead-letter writes wait for a concurrent writer (the archive storing
an instance) instead of failing at once: on SQLite, a deferred transaction that reads and
then writes while another commits gets SQLITE_BUSY_SNAPSHOT with no wait."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from medflow.db.engine import create_engine, upgrade, write_session
from medflow.sync.state import DbState

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("write", ["cursor", "dead_letter"])
def test_state_writes_wait_for_a_concurrent_writer(tmp_path: Path, write: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    upgrade(engine)
    state, now = DbState(engine), datetime.now(UTC)
    state.set_cursor("dicom", 1, now)
    state.dead_letter("1.2.3", 1, "first", now)
    holding, release, errors = threading.Event(), threading.Event(), list[BaseException]()

    def other_writer() -> None:  # the archive's write transaction, open for a while
        with write_session(engine) as s, s.begin():
            s.execute(text("UPDATE sync_cursor SET seq = seq WHERE name = 'dicom'"))
            holding.set()
            release.wait(5)

    def state_write() -> None:
        try:
            if write == "cursor":
                state.set_cursor("dicom", 2, now)
            else:
                state.dead_letter("1.2.3", 2, "again", now)
        except BaseException as exc:  # recorded for the assertion
            errors.append(exc)

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert holding.wait(5)
    ours = threading.Thread(target=state_write)
    ours.start()
    ours.join(0.3)  # it is waiting (or, before the fix, has already failed)
    release.set()
    writer.join(10)
    ours.join(10)
    assert not errors, errors
    if write == "cursor":
        assert state.cursor("dicom") == 2
    else:
        assert [(d.seq, d.attempts) for d in state.failures()] == [(2, 2)]
    engine.dispose()
