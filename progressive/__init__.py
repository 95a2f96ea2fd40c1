"""Divergence triangle: generator, energy-based model and inference model trained jointly, grown progressively.

Layout (docs/architecture.md has the module graph):
    objective   -- D's configuration, recipes and loss terms; one joint iteration (`triangle_step`).
    updates     -- how a loss becomes one network's update (plain, or with loss scaling and non-finite checks).
    models      -- the three networks as one object (stage changes in sync), unwrapping, the generator average.
    presets     -- one table: each preset's networks, schedule and training defaults.
    nets/       -- layers, progressive networks, the paper's reference networks.
    data        -- synthetic images, the deterministic batch stream and its loader.
    train/      -- configuration, schedule, optimisers, noise, checkpoints, health, the loop.
    eval/       -- metrics and their registry, sampling, real-image sources, Inception features, the domain
                   classifier, videos, energy landscapes.
    io          -- atomic file writes.
    errors      -- `BadInput`: a problem the user can fix, one line.
    pretrained  -- `load_trained(path)`, `open_trained(path, device)`: a trained run for Python code.
    evaluation  -- `evaluate_run(checkpoint_or_run)`: the report triangle-evaluate writes.
    cli/        -- the command-line programs (`main(argv)`).
"""

__version__ = "0.1.0"
