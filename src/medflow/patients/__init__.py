"""The longitudinal patient record (issue 12): one patient's clinical history (FHIR R4) and
imaging (the archive) as a timeline, built only on the public services: ``$everything`` and
FHIR search on the FHIR side, study queries (QIDO-RS matching) and WADO-RS thumbnails on the
imaging side, in process or over REST against external servers."""
