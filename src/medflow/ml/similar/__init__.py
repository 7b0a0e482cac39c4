"""Similar images (issue 11): embeddings of archived images (a promoted model's penultimate
layer) kept with the instances, an embedded vector index per model (usearch, cosine), the
worker that computes them from the archive's change feed, and ``GET /api/similar``.

``models.py`` (tables), ``store.py`` (:class:`EmbeddingStore`: rows, cursor, failures),
``index.py`` (:class:`VectorIndex`, persisted under ``<data_dir>/ml/similar/``), ``worker.py``
(:class:`EmbeddingWorker`), ``service.py`` (:class:`SimilarService`), ``api.py`` (the edge).
Nothing here imports torch: the embedder (a model's ``Predictor``) is passed in."""
