"""References between instances survive de-identification (PS3.15 E.1: UIDs replaced
consistently): KOS, TID 1500 SR and SEG built with highdicom over CT images built in code."""

from __future__ import annotations

import io
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medflow.deid.dicom import DicomDeidentifier
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import load_profile
from tests.factories import make_instance, to_bytes
from tests.unit.deid.conftest import KEY


def _cts() -> list[Dataset]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in range(3):
        ds = make_instance(
            study_uid=study,
            series_uid=series,
            instance_number=i + 1,
            seed=i,
            FrameOfReferenceUID=frame,
            PositionReferenceIndicator="",
            ImagePositionPatient=[0.0, 0.0, float(i)],
            ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            PixelSpacing=[1.0, 1.0],
            SliceThickness=1.0,
            ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
            Manufacturer="ACME",
            InstitutionName="General Hospital",
        )
        out.append(pydicom.dcmread(io.BytesIO(to_bytes(ds))))
    return out


def _kos(cts: list[Dataset]) -> Dataset:
    content = hd.ko.KeyObjectSelection(document_title=codes.DCM.Manifest, referenced_objects=cts)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=cts,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=10,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medflow-test",
    )


def _sr(cts: list[Dataset]) -> Dataset:
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[2.0, 2.0]]),
        source_image=hd.sr.SourceImageForRegion.from_source_image(cts[1]),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="lesion 1"),
        referenced_region=region,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Diameter, value=4.0, unit=codes.UCUM.Millimeter)
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name="Welby^Marcus"
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=cts,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=11,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medflow-test",
    )


def _seg(cts: list[Dataset]) -> Dataset:
    mask = np.zeros((3, 16, 16), dtype=np.uint8)
    mask[1, 4:8, 4:8] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    return hd.seg.Segmentation(
        source_images=cts,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=12,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="medflow-test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="SN-1234",
    )


def _walk_uids(ds: Dataset, keyword: str) -> list[str]:
    found: list[str] = []
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found += _walk_uids(item, keyword)
        elif elem.keyword == keyword and elem.value:
            found.append(str(elem.value))
    return found


@pytest.mark.parametrize("profile", ["basic", "research"])
def test_references_resolve_after_deidentification(profile: str) -> None:
    deid = DicomDeidentifier(load_profile(profile), DeidKeys(KEY))
    cts = _cts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        derived = [_kos(cts), _sr(cts), _seg(cts)]
        out_cts = [deid.deidentify(ct) for ct in cts]
        out_derived = [
            pydicom.dcmread(io.BytesIO(deid.deidentify_bytes(to_bytes(ds)))) for ds in derived
        ]
    sops = {str(ct.SOPInstanceUID) for ct in out_cts}
    series = {str(ct.SeriesInstanceUID) for ct in out_cts}
    (study,) = {str(ct.StudyInstanceUID) for ct in out_cts}
    (frame,) = {str(ct.FrameOfReferenceUID) for ct in out_cts}
    assert not sops & {str(ct.SOPInstanceUID) for ct in cts}
    for original, ds in zip(derived, out_derived, strict=True):
        refs = set(_walk_uids(ds, "ReferencedSOPInstanceUID"))
        assert refs and refs <= sops, (ds.Modality, refs - sops)
        assert str(ds.StudyInstanceUID) == study
        assert str(ds.StudyInstanceUID) != str(original.StudyInstanceUID)
        for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            assert str(evidence.StudyInstanceUID) == study
            for item in evidence.ReferencedSeriesSequence:
                assert str(item.SeriesInstanceUID) in series
        assert str(ds.file_meta.MediaStorageSOPInstanceUID) == str(ds.SOPInstanceUID)
    seg = out_derived[2]
    assert str(seg.FrameOfReferenceUID) == frame
    assert set(_walk_uids(seg, "SeriesInstanceUID")) - {str(seg.SeriesInstanceUID)} <= series
    # the SR's observer name (PersonName in the Content Sequence) is gone
    assert b"Welby" not in to_bytes(out_derived[1])
    assert b"Hospital" not in to_bytes(out_cts[0])
    # highdicom can still decode them
    hd.sr.srread(io.BytesIO(to_bytes(out_derived[1])))
    hd.seg.segread(io.BytesIO(to_bytes(seg)))
