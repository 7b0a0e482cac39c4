"""Training a 2D image classifier from a labels manifest (torch + MONAI)."""
