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
