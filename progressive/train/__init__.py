"""Training: the resolved configuration, the schedule (stage and learning rates as a function of images shown),
optimisers, noise, checkpoints, run directories, health checks and the loop that uses them."""
