"""Bone-age metrics and the intervals that compare models (bootstrap over images, paired differences, seeds)."""
