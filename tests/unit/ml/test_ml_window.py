"""The window of a signed, rescaled CT (PS3.3 C.11.2.1.2) applies to the rescaled values: the
soft-tissue window of CT_small keeps most of the body, not half the image clipped to black
(pydicom's windowed output is in the stored values' range, which the first version took as
[0, 2**BitsStored - 1])."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medflow.ml.train.images import _window, frame_to_array


def test_window_bounds_are_in_rescaled_units() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    assert int(ds.PixelRepresentation) == 1 and float(ds.RescaleIntercept) == -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    hu = apply_modality_lut(ds.pixel_array.astype(float), ds)
    assert _window(ds, hu) == (-160.0, 240.0)
    image = frame_to_array(ds, 1, int(ds.Rows))
    at_floor = float(np.mean(image <= image.min() + 1e-6))
    inside = float(np.mean((hu > -160) & (hu < 240)))
    assert at_floor < 0.45 and inside > 0.5  # the body is in the window, not clipped away


def test_training_refuses_a_validation_split_without_both_classes() -> None:
    """A validation split with one class has no AUC: early stopping and the operating point
    would mean nothing, so training refuses it (it used to run with AUC 0)."""
    import pytest

    from medflow.core.errors import InvalidInput
    from medflow.ml.train.loop import FitOptions, fit
    from medflow.ml.train.nets import build_network

    images = np.zeros((4, 1, 32, 32), dtype=np.float32)
    features = np.zeros((4, 0), dtype=np.float32)
    train = (images, features, np.array([0, 1, 0, 1], dtype=np.int64))
    val = (images, features, np.array([0, 0, 0, 0], dtype=np.int64))
    options = FitOptions(epochs=1, batch_size=2, lr=1e-3, weight_decay=0.0, patience=1,
                         augment=False, seed=0, device="cpu", max_steps=1)  # fmt: skip
    net = build_network("small", in_channels=1, classes=2)
    with pytest.raises(InvalidInput, match="no example of class 1"):
        fit(net, train, val, classes=2, adjustment=np.zeros(2), options=options)
    with pytest.raises(InvalidInput, match="at least one epoch"):
        no_epochs = FitOptions(**{**options.__dict__, "epochs": 0})
        both = (images, features, np.array([0, 1, 0, 1]))
        fit(net, train, both, classes=2, adjustment=np.zeros(2), options=no_epochs)
