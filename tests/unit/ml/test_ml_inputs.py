"""The manifest reader, frame decoding (LUTs, MONOCHROME1) and the networks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.core.errors import InvalidInput
from medflow.ml.train.images import frame_to_array
from medflow.ml.train.manifest import read_manifest
from medflow.ml.train.nets import build_network
from tests.ml_data import write_manifest


def _row(patient: str, split: str, **kw: Any) -> dict[str, Any]:
    row = {"sop_instance_uid": generate_uid(), "frame": 1, "study_uid": "1.2", "series_uid": "1.3",
           "patient_id": patient, "label": "normal", "value": 0, "roi": None, "source_uid": "",
           "label_set": "s", "label_set_version": 1, "split": split}  # fmt: skip
    return {**row, **kw}


def test_manifest_reader_checks(tmp_path: Path) -> None:
    good = write_manifest([_row("a", "train"), _row("b", "test")], tmp_path / "m.parquet")
    assert read_manifest(good).num_rows == 2
    mixed = write_manifest([_row("a", "train"), _row("a", "test")], tmp_path / "x.parquet")
    with pytest.raises(InvalidInput, match="more than one split"):
        read_manifest(mixed)
    bad = write_manifest([_row("a", "dev")], tmp_path / "y.parquet")
    with pytest.raises(InvalidInput, match="unknown split"):
        read_manifest(bad)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sop_instance_uid": ["1"]}), tmp_path / "z.parquet")
    with pytest.raises(InvalidInput, match="lacks the columns"):
        read_manifest(tmp_path / "z.parquet")


def _dataset(pixels: np.ndarray, photometric: str, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_decode_scales_inverts_and_resizes() -> None:
    ramp = np.tile(np.linspace(0, 4000, 64), (64, 1))
    mono2 = frame_to_array(_dataset(ramp, "MONOCHROME2"), 1, 16)
    mono1 = frame_to_array(_dataset(ramp, "MONOCHROME1"), 1, 16)
    assert mono2.shape == (16, 16)
    assert mono2.dtype == np.float32
    assert abs(float(mono2.mean())) < 1e-5
    assert float(mono2.std()) == pytest.approx(1.0, abs=1e-3)
    assert mono2[0, -1] > mono2[0, 0]  # brighter to the right
    np.testing.assert_allclose(mono1, -mono2, atol=1e-4)  # inverted
    # a window clips: everything above centre + width/2 saturates
    windowed = frame_to_array(_dataset(ramp, "MONOCHROME2", WindowCenter=1000,
                                       WindowWidth=1000), 1, 16)  # fmt: skip
    assert np.allclose(windowed[:, -4:], windowed[0, -1], atol=1e-4)
    # the modality LUT applies before the window (HU-like data)
    ct = frame_to_array(_dataset(ramp, "MONOCHROME2", RescaleSlope=1, RescaleIntercept=-1024,
                                 WindowCenter=40, WindowWidth=400), 1, 16)  # fmt: skip
    assert ct[0, 0] < ct[0, -1]
    with pytest.raises(InvalidInput):
        frame_to_array(_dataset(ramp, "MONOCHROME2"), 2, 16)


def test_decode_reads_pydicom_test_files() -> None:
    from pydicom.data import get_testdata_file

    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        out = frame_to_array(ds, 1, 32)
        assert out.shape == (32, 32)
        assert np.isfinite(out).all()


@pytest.mark.parametrize("arch", ["small", "resnet18", "densenet121"])
def test_networks_fuse_tabular_features(arch: str) -> None:
    net = build_network(arch, in_channels=1, classes=2, tabular=3).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 64, 64), torch.ones(2, 3))
    assert out.shape == (2, 2)
    with pytest.raises(InvalidInput):
        net(torch.zeros(2, 1, 64, 64))
    with pytest.raises(InvalidInput):
        build_network("vgg", in_channels=1, classes=2)
