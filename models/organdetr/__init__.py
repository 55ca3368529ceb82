"""Organ-DETR: 3D organ detection transformer (network, Dense Query Matching, losses, training, evaluation)."""

__version__ = "0.1.0"
