"""Shared test settings: small thread pool so parallel suites on 2 cores stay responsive."""

import torch

torch.set_num_threads(2)
