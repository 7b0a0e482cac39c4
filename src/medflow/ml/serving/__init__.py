"""Serving (issue 11): registered models answering predictions over REST.

``service.py`` (torch-free: the predictor cache, the input-spec check, archive references
resolved to instances), ``predictor.py`` (a loaded model: preprocessing as in training,
probabilities, embeddings; the only module here that imports torch) and ``api.py`` (the
``/api/models`` edge). ``medflow serve`` imports ``api`` and ``service`` only, so torch is
loaded on the first prediction, never at start."""
