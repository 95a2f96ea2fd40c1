"""Shared test settings: one intra-op thread (tiny networks run fastest that way, and suites share 2 cores)."""

import torch

torch.set_num_threads(1)
