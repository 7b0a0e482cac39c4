"""Package data of ``medflow.fhir``: compact tables derived from the FHIR R4 definitions."""
