"""Tests for fvit.attacks on tiny CPU models (8 px images, linear / small MLP classifiers)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fvit.attacks import (
    PAPER_STEP_SIZE,
    ExpectationForward,
    ForwardModule,
    expectation_forward,
    get_attack,
    get_explanation_attack,
    predicted_labels,
)
from fvit.errors import FvitError, InputError, UnknownNameError

SIDE = 8
CLASSES = 3
EPS = 8 / 255
FLOAT_SLACK = 1e-6  # x + delta - x in float32 may exceed delta by a few ulps of 1.0


def linear_model(seed: int = 0, classes: int = CLASSES) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, classes))


def images(batch: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, SIDE, SIDE, generator=g)
    x[0, :, :2] = 0.0  # pixels on the box boundary must stay in [0, 1]
    x[1, :, :2] = 1.0
    return x


def two_class_data(n: int = 64, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 dark, class 1 bright, with noise: trivially learnable, easily attacked."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = 0.4 + 0.2 * y.float().view(-1, 1, 1, 1)
    x = (base + 0.1 * torch.randn(n, 3, SIDE, SIDE, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = two_class_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # (Adam imports torch._dynamo: slow)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


# ----------------------------------------------------------------------------- threat model


@pytest.mark.parametrize("name", ["pgd", "pgd-reference", "fgsm"])
def test_linf_attacks_stay_in_ball_and_box(name):
    x = images()
    adv = get_attack(name, EPS)(linear_model(), x)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= EPS + FLOAT_SLACK
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - x).abs().max() > EPS / 2  # it did move


def test_pgd_l2_stays_in_ball_and_box():
    x = images()
    eps = 0.5
    adv = get_attack("pgd-l2", eps, steps=5)(linear_model(), x)
    norms = (adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps * (1 + FLOAT_SLACK)).all()
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert norms.max() > eps / 2


def test_zero_eps_returns_the_input():
    x = images()
    adv = get_attack("pgd", 0)(linear_model(), x)
    assert torch.equal(adv, x) and adv is not x


# ----------------------------------------------------------------------------- correctness


def test_fgsm_equals_closed_form_on_linear_model():
    model = linear_model()
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    x = images()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    # d/dx CE(Wx + b, y) = W^T (softmax(Wx + b) - onehot(y))
    probs = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    grad = ((probs - F.one_hot(y, CLASSES).float()) @ weight).view_as(x)
    expected = (x + EPS * grad.sign()).clamp(0, 1)
    adv = get_attack("fgsm", EPS)(model, x, y)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-7)


def test_pgd_reduces_accuracy_of_trained_classifier(trained_mlp):
    model, x, y = trained_mlp
    clean_acc = (model(x).argmax(1) == y).float().mean().item()
    adv = get_attack("pgd", 0.15, step_size="scaled")(model, x, y)
    adv_acc = (model(adv).argmax(1) == y).float().mean().item()
    assert clean_acc >= 0.95
    assert adv_acc <= 0.2


def test_pgd_loss_grows_monotonically_with_eps(trained_mlp):
    model, x, y = trained_mlp
    losses = [
        mean_loss(model, get_attack("pgd", eps, step_size="scaled", random_start=False)(model, x, y), y)
        for eps in (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255)
    ]
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_seeded_random_start_is_reproducible():
    model, x = linear_model(), images()
    a = get_attack("pgd", EPS, steps=1, seed=3)(model, x)
    b = get_attack("pgd", EPS, steps=1, seed=3)(model, x)
    c = get_attack("pgd", EPS, steps=1, seed=4)(model, x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_labels_default_to_the_models_prediction():
    model, x = linear_model(), images()
    predicted = predicted_labels(model, x)
    torch.testing.assert_close(predicted, model(x).argmax(1))
    attack = get_attack("pgd", EPS, seed=0)
    assert torch.equal(attack(model, x), attack(model, x, predicted))
    other = (predicted + 1) % CLASSES
    assert not torch.equal(attack(model, x), attack(model, x, other))


def test_gradients_only_wrt_input_and_state_restored():
    seen_training = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = linear_model()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            seen_training.append(self.training)
            return self.drop(self.body(x))

    model = Spy().train()
    x = images().requires_grad_(True)
    adv = get_attack("pgd", EPS, steps=2)(model, x)
    assert not adv.requires_grad
    assert x.requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())
    assert seen_training and not any(seen_training)  # eval during the attack ...
    assert model.training and model.drop.training  # ... restored afterwards


def test_bound_method_forward_and_inference_mode_caller():
    model, x = linear_model().train(), images()
    with torch.inference_mode():
        adv = get_attack("fgsm", EPS)(model.forward, x.clone())
    assert model.training
    assert (adv - x).abs().max() > 0


def test_bad_inputs_raise_fvit_errors():
    model = linear_model()
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        get_attack("pgd", EPS)(model, images() * 2)
    with pytest.raises(InputError, match="labels"):
        get_attack("pgd", EPS)(model, images(), torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputError):
        get_attack("pgd", EPS)(model, torch.rand(3, SIDE, SIDE))


# ----------------------------------------------------------------------------- registry / presets


def test_step_size_presets():
    assert get_attack("pgd", EPS).step_size == pytest.approx(PAPER_STEP_SIZE)
    assert get_attack("pgd", 16 / 255).step_size == pytest.approx(2 / 255)  # the text's absolute step
    assert get_attack("pgd", 16 / 255, step_size="scaled").step_size == pytest.approx(4 / 255)
    assert get_attack("pgd-reference", 10 / 255).step_size == pytest.approx(2 / 255)
    assert get_attack("pgd", EPS, step_size="reference").step_size == pytest.approx(EPS / 5)
    assert get_attack("pgd", 8 / 255, step_size=1 / 255).step_size == pytest.approx(1 / 255)
    assert get_attack("pgd-l2", 1.0).step_size == pytest.approx(0.2)
    assert get_attack("pgd", EPS, norm="l2").step_size == pytest.approx(EPS / 5)
    pgd = get_attack("PGD", 8 / 255)
    assert (pgd.eps, pgd.norm, pgd.steps, pgd.random_start) == (pytest.approx(EPS), "linf", 10, True)
    fgsm = get_attack("fgsm", EPS)
    assert (fgsm.steps, fgsm.step_size, fgsm.random_start) == (1, EPS, False)


def test_registry_errors():
    with pytest.raises(UnknownNameError, match="pgd"):
        get_attack("cw", EPS)
    with pytest.raises(UnknownNameError, match="paper"):
        get_attack("pgd", EPS, step_size="huge")
    with pytest.raises(FvitError, match="l_inf only"):
        get_attack("pgd-l2", 1.0, step_size="paper")
    with pytest.raises(FvitError, match="norm"):
        get_attack("pgd-l2", 1.0, norm="linf")
    with pytest.raises(FvitError, match="steps"):
        get_attack("fgsm", EPS, steps=5)
    with pytest.raises(FvitError, match="eps"):
        get_attack("pgd", -1)


def test_numbers_as_strings_are_the_command_lines_job():
    with pytest.raises(InputError, match="attack: eps must be a number, got '8/255'"):
        get_attack("pgd", "8/255")
    with pytest.raises(InputError, match="attack: step_size must be a number, got '1/255'"):
        get_attack("pgd", EPS, step_size="1/255")
    with pytest.raises(InputError, match="explanation attack: eps must be a number, got '8/255'"):
        get_explanation_attack("topk", "8/255")
    with pytest.raises(InputError, match="step_size must be > 0, got 0"):
        get_explanation_attack("topk", EPS, step_size=0)


# ----------------------------------------------------------------------------- AutoAttack adapter


def test_autoattack_without_extra_tells_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # makes `import torchattacks` fail
    with pytest.raises(FvitError, match=r"pip install 'fvit\[attacks\]'"):
        get_attack("autoattack", EPS)(linear_model(), images())


def test_autoattack_adapter_with_fake_torchattacks(monkeypatch):
    calls = {}

    class FakeAutoAttack:
        def __init__(self, model, **kwargs):
            calls["kwargs"] = kwargs
            calls["model"] = model
            self.model = model
            self.device = next(model.parameters()).device  # what torchattacks does

        def __call__(self, images, labels):
            self.model.eval()
            calls["labels"] = labels
            calls["logits"] = self.model(images)
            calls["training_inside"] = self.model.training
            return images + 3 * calls["kwargs"]["eps"]  # overshoots: must be projected back

    fake = types.ModuleType("torchattacks")
    fake.AutoAttack = FakeAutoAttack
    monkeypatch.setitem(sys.modules, "torchattacks", fake)

    model, x = linear_model().train(), images()
    adv = get_attack("autoattack", EPS, seed=7)(model, x)
    assert calls["kwargs"] == {"norm": "Linf", "eps": pytest.approx(EPS), "version": "standard",
                               "n_classes": CLASSES, "seed": 7, "verbose": False}
    assert isinstance(calls["model"], ForwardModule)
    torch.testing.assert_close(calls["logits"], model(x))
    torch.testing.assert_close(calls["labels"], model(x).argmax(1))
    assert calls["training_inside"] is False
    assert model.training  # restored
    assert (adv - x).abs().max() <= EPS + FLOAT_SLACK and adv.max() <= 1.0
    assert all(p.grad is None for p in model.parameters())


def test_forward_module_wraps_plain_functions():
    x = images(2)
    module = ForwardModule(lambda t: t.flatten(1)[:, :CLASSES], x)
    assert next(module.parameters()).device == x.device
    torch.testing.assert_close(module(x), x.flatten(1)[:, :CLASSES])


# ----------------------------------------------------------------------------- expectation over noise


def offsets_sampler(m: int):
    shifts = torch.linspace(-0.05, 0.05, m).view(1, m, 1, 1, 1)
    return lambda x: (x.unsqueeze(1) + shifts).clamp(0, 1)


def test_expectation_forward_is_log_mean_softmax():
    model, x, m = linear_model(), images(4), 3
    forward = expectation_forward(offsets_sampler(m), model, m)
    samples = offsets_sampler(m)(x)
    probs = torch.softmax(model(samples.flatten(0, 1)).view(4, m, -1), dim=-1)
    torch.testing.assert_close(forward(x), probs.mean(1).log())
    mean_logits = expectation_forward(offsets_sampler(m), model, reduce="mean-logits", max_batch=5)(x)
    torch.testing.assert_close(mean_logits, model(samples.flatten(0, 1)).view(4, m, -1).mean(1))


def test_attack_through_expectation_forward():
    model, x = linear_model().train(), images(4)
    forward = expectation_forward(offsets_sampler(2), model, 2)
    assert isinstance(forward, ExpectationForward)
    adv = get_attack("pgd", EPS, steps=2)(forward, x)
    assert (adv - x).abs().max() <= EPS + FLOAT_SLACK
    assert model.training  # eval reached the wrapped model and was restored
    assert all(p.grad is None for p in model.parameters())


def test_expectation_forward_checks_sample_shape():
    forward = expectation_forward(offsets_sampler(2), linear_model(), m=3)
    with pytest.raises(InputError, match=r"\(B, m, C, H, W\)"):
        forward(images(2))
