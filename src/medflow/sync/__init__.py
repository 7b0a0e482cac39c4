"""DICOM -> FHIR sync ("DICOMcast"): the mapping and the worker that applies it."""
