"""Divergence triangle: generator, energy-based model and inference model trained jointly.

Modules:
    triangle   -- the objective and one training iteration (`train_step`).
    presets    -- named model configurations (`build_models`).
    reference  -- the fixed-resolution reference networks of the paper's CIFAR-10 experiments.
    synthetic  -- procedurally rendered images for demos and tests (no download).
"""

__version__ = "0.1.0"
