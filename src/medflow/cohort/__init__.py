"""Cohorts across FHIR and DICOM (issue 7): definitions, evaluation, tracking, outcomes."""
