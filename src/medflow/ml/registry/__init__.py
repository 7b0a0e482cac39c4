"""The model registry: versions of named models with their weights and plots as blobs."""
