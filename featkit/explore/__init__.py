"""Exploring embeddings: UMAP, separability, outliers, label issues, duplicates, ranking."""
