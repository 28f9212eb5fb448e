"""Extraction at scale: Ray Data engine."""
