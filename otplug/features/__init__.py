"""Features: reading batch values, slicing, time reduction and flattening (step 1 of
features -> terms -> M -> solver -> loss -> sinks)."""

from otplug.features.extract import has_time_axis, is_image_key, pad_mask, read_value, slice_last
from otplug.features.reduce import flatten, reduce_time

__all__ = ["flatten", "has_time_axis", "is_image_key", "pad_mask", "read_value", "reduce_time", "slice_last"]
