"""Example otplug plugin: ``cosine``, a cosine-distance cost between encoder embeddings."""

__version__ = "0.1.0"
