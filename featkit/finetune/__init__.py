"""Shared-trunk multi-task fine-tuning whose embeddings go back into the store."""
