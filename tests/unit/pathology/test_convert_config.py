"""pydicom's process-wide settings survive wsidicomizer's import even when two conversions
start at once: the guard is serialized, so the second never saves (and later restores) the
strict settings the first import set."""

from __future__ import annotations

import threading
import time

from pydicom import config

from medflow.pathology.convert import pydicom_config_kept


def test_concurrent_guards_restore_the_defaults() -> None:
    original = config.settings.writing_validation_mode
    entered = threading.Event()

    def first() -> None:
        with pydicom_config_kept():
            config.settings.writing_validation_mode = config.RAISE  # what the import does
            entered.set()
            time.sleep(0.2)

    def second() -> None:
        entered.wait()
        with pydicom_config_kept():  # unserialized, it would save RAISE and restore it last
            time.sleep(0.3)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert config.settings.writing_validation_mode == original
