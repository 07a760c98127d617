"""Registered model components of mmseg-msvit."""
