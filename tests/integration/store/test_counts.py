"""Number of Study/Series Related Series/Instances and Modalities in Study are kept on the rows
by the write transaction; they must equal what the index holds after every kind of change."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from medflow.core.settings import Settings, StoreSettings
from medflow.store.models import Instance, Series, Study
from medflow.store.service import StoreService
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"store": StoreSettings(overwrite=True)})


def assert_counts_true(store: StoreService) -> None:
    with store.read_session() as s:
        for study in s.scalars(select(Study)):
            series = list(s.scalars(select(Series).where(Series.study_pk == study.pk)))
            n_inst = s.scalar(select(func.count()).where(Instance.study_pk == study.pk))
            assert study.num_series == len(series)
            assert study.num_instances == n_inst
            modalities = sorted({se.modality for se in series if se.modality})
            assert (study.modalities_in_study or "") == "\\".join(modalities)
            for se in series:
                assert se.num_instances == s.scalar(
                    select(func.count()).where(Instance.series_pk == se.pk)
                )


def test_counts_follow_stores_moves_and_deletes(store: StoreService) -> None:
    study = generate_uid()
    ct, mr = generate_uid(), generate_uid()
    cts = [make_instance(study_uid=study, series_uid=ct, seed=i) for i in range(3)]
    mrs = [make_instance(study_uid=study, series_uid=mr, modality="MR", seed=9) for _ in range(2)]
    store_datasets(store, [*cts, *mrs])
    assert_counts_true(store)

    # An overwrite that moves an instance to the MR series (different content, same SOP UID).
    moved = make_instance(
        study_uid=study, series_uid=mr, modality="MR", sop_uid=cts[0].SOPInstanceUID, seed=42
    )
    assert store_datasets(store, [moved])[0].action == "update"
    assert_counts_true(store)

    # Moving the last CT instances away removes CT from Modalities in Study.
    for ds in cts[1:]:
        store_datasets(
            store,
            [
                make_instance(
                    study_uid=study, series_uid=mr, modality="MR", sop_uid=ds.SOPInstanceUID, seed=7
                )
            ],
        )
    assert_counts_true(store)
    with store.read_session() as s:
        row = s.scalars(select(Study).where(Study.study_uid == study)).one()
        assert (row.num_series, row.num_instances, row.modalities_in_study) == (1, 5, "MR")

    store.delete(study_uid=study, series_uid=mr, sop_uid=mrs[0].SOPInstanceUID)
    assert_counts_true(store)
    store.delete(study_uid=study)
    assert_counts_true(store)
