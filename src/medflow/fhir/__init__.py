"""FHIR R4 server: definitions, validation, storage, search, REST (HL7 FHIR R4 4.0.1)."""
