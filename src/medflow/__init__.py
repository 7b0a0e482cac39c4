"""medflow: medical imaging archive, FHIR records and AI on one platform."""

__version__ = "0.1.0"
