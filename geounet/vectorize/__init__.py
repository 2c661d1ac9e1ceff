"""Polygons: per-block polygonizing (workers), the exact seam merge and metric post-processing (client)."""
