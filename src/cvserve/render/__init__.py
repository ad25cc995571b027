"""Renderers: typed results -> wire formats (hosted JSON, annotated images)."""
