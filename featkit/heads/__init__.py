"""Per-task heads over cached embeddings: sklearn/imblearn pipelines, evaluation, saved models."""
