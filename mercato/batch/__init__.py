"""The batch layer: exact rollups recomputed from the archive, sealed hour by hour."""
