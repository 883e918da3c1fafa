"""spacil: Semantic-guided Patch-level Alignment (SPA) for CLIP-based class-incremental learning."""

__version__ = "0.1.0"
