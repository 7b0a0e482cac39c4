"""Labels as DICOM objects (issue 10): label sets, KOS/SR/SEG written into the original study,
labels others wrote read back from the archive, and deterministic training manifests."""
