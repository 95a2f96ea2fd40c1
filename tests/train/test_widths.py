"""--channel-base, --channel-max and --latent-dim: a progressive preset's networks made wider or narrower, or given
another latent size, recorded in the run and honoured wherever the networks are rebuilt (resume, load_trained, the
Hugging Face layout)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, run_train_main

from progressive.hub import PretrainedTriangle
from progressive.nets.layers import channels_per_resolution
from progressive.presets import build_models, network_overrides
from progressive.pretrained import load_trained
from progressive.train.checkpoint import list_checkpoints, load_checkpoint
from progressive.train.config import TrainConfig, config_differences, merge_config, preset_config


def test_widths_change_every_networks_channels_and_only_where_asked():
    default, wider = build_models("demo"), build_models("demo", channel_base=1024)
    assert default.generator.channels == channels_per_resolution(4, 32, 512, 64) == {4: 64, 8: 64, 16: 32, 32: 16}
    for net in (wider.generator, wider.energy, wider.inference):
        assert net.channels == {4: 64, 8: 64, 16: 64, 32: 32}
    assert build_models("demo", channel_max=32).energy.channels == {4: 32, 8: 32, 16: 32, 32: 16}
    assert build_models("tiny", image_channels=1, channel_base=128, channel_max=8).generator.channels[16] == 8


def test_latent_dim_changes_the_generators_input_and_the_inference_models_output_only():
    default, small = build_models("demo"), build_models("demo", latent_dim=16)
    assert (default.latent_dim, small.latent_dim) == (64, 16)
    assert small.generator.channels == default.generator.channels
    small.set_stage(8, 1.0)
    image = small.generator(torch.randn(3, 16))
    assert image.shape == (3, 3, 8, 8)
    mu, logvar = small.inference(image)
    assert mu.shape == logvar.shape == (3, 16)
    with pytest.raises(AssertionError, match=r"expected z of shape \(B, 16\)"):
        small.generator(torch.randn(3, 64))


@pytest.mark.parametrize(
    "preset, widths, message",
    [
        (
            "cifar10",
            {"channel_base": 1024},
            "--channel-base: progressive presets only .*preset cifar10 has the paper's fixed",
        ),
        ("demo", {"channel_base": 0}, "--channel-base must be a positive integer, got 0"),
        ("demo", {"channel_max": 2.5}, "--channel-max must be a positive integer, got 2.5"),
        ("cifar10", {"latent_dim": 16}, "--latent-dim: progressive presets only"),
        ("demo", {"latent_dim": 0}, "--latent-dim must be a positive integer, got 0"),
    ],
)
def test_widths_that_cannot_be_built_are_refused_by_the_config_and_the_builder(preset, widths, message):
    with pytest.raises(ValueError, match=message):
        build_models(preset, **widths)
    with pytest.raises(ValueError, match=message):
        TrainConfig(preset=preset, **widths)


@pytest.mark.slow
def test_a_wider_run_trains_resumes_loads_and_exports_with_its_widths(tmp_path, capsys):
    out = tmp_path / "runs"
    wide = ["--channel-base", "128", "--channel-max", "8", "--latent-dim", "4"]
    assert run_train_main([*TINY, *wide, "--out", str(out), "--kimg", "0.096"]) == 0
    run_dir = out / "00000-tiny-16"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["channel_base"], config["channel_max"], config["latent_dim"]) == (128, 8, 4)

    run = load_trained(run_dir)
    for net in (*run.models.networks().values(), run.models.generator_ema):
        assert net.channels == {4: 8, 8: 8, 16: 8, 32: 4}
    assert run.models.latent_dim == run.models.generator_ema.latent_dim == run.models.inference.latent_dim == 4

    # Resuming with the preset's own widths would be another network: refused with one line, nothing written.
    capsys.readouterr()
    assert run_train_main([*TINY, "--out", str(out), "--resume", "latest", "--kimg", "0.192"]) == 2
    err = capsys.readouterr().err
    assert "channel_base: 128 -> None" in err and "channel_max: 8 -> None" in err and "latent_dim: 4 -> None" in err
    assert len(list_checkpoints(run_dir / "checkpoints")) == 1
    assert run_train_main([*TINY, *wide, "--out", str(out), "--resume", "latest", "--kimg", "0.192"]) == 0
    assert load_trained(run_dir).images_shown == 192

    model = PretrainedTriangle.from_run(run_dir)
    model.save_pretrained(tmp_path / "exported")
    hub_config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert (hub_config["channel_base"], hub_config["channel_max"], hub_config["latent_dim"]) == (128, 8, 4)
    loaded = PretrainedTriangle.from_pretrained(tmp_path / "exported")
    assert torch.equal(loaded.sample(seeds=range(3)), model.sample(seeds=range(3)))


def test_checkpoints_and_configs_written_before_the_widths_existed_load_with_the_presets_own(tiny_run):
    state = load_checkpoint(list_checkpoints(tiny_run / "checkpoints")[-1])
    old = json.loads(state["config"])
    del old["channel_base"], old["channel_max"], old["latent_dim"]
    config = merge_config(preset_config("tiny"), old)
    assert (config.channel_base, config.channel_max, config.latent_dim) == (None, None, None)
    assert network_overrides("tiny", config.channel_base, config.channel_max, config.latent_dim) == {}
    assert config.network_overrides() == {}
    assert not config_differences(old, config.to_dict())


def test_train_refuses_widths_for_a_fixed_preset_with_one_line(tmp_path, capsys):
    args = ["--preset", "cifar10-tiny", "--channel-base", "64", "--out", str(tmp_path), "--dry-run"]
    assert run_train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "preset cifar10-tiny has the paper's fixed networks" in err
    assert not any(tmp_path.iterdir())
