"""Evaluation: the metric registry (reconstruction, SWD, energy, FID, KID, IS, classifier), Inception features, the
domain classifier, interpolation videos and energy landscapes."""
