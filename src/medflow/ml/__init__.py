"""Machine learning (issue 10): training (``train/``) and the model registry (``registry/``).

torch and MONAI are imported only under this package. It reaches other contexts only through
their services: ``store`` (images), ``fhir`` (tabular features)."""
