"""The synthetic hospital: deterministic patients, FHIR records and DICOM images (no real
patient data), for `make run`, tests and benchmarks."""
