"""Bundled NVIDIA trust anchors (package data): the device identity root and the RIM root."""
