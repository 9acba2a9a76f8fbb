"""Figures beyond the evaluation plots: margin geometry on the circle and the sphere."""
