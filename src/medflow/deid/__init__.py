"""De-identification (issue 8): DICOM by the PS3.15 Annex E profiles and FHIR by rules, with one
pseudonym space (:mod:`medflow.deid.keys`) so the same patient gets the same pseudonym and the
same date shift in both. See ``docs/deid.md``."""
