"""Datasets: the embedded synthetic data, the VOC reader, the prepared manifest, training sets."""
