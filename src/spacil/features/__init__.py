"""Frozen-feature extraction and the on-disk feature cache."""

from .cache import CacheError, FeatureCache, FeatureSet, feature_key
from .extract import extract_to_cache, feature_key_parts, get_features

__all__ = ["CacheError", "FeatureCache", "FeatureSet", "feature_key", "extract_to_cache", "feature_key_parts", "get_features"]
