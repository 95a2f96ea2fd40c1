"""Evaluation: the metric registry (reconstruction, SWD, energy, FID, KID, IS), Inception features, interpolation
videos and energy landscapes."""
