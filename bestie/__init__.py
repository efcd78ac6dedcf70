"""BESTIE: weakly-supervised instance segmentation via semantic knowledge transfer and self-refinement."""

__version__ = "0.1.0"
