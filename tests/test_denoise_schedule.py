"""Noise schedules, sigma -> t* mappings (against FACTS.md / paper Table 3), the CLI, samplers."""

import pytest
import torch

from fvit.denoise import (OracleDenoiser, cosine_schedule, linear_schedule, parse_sampler,
                          step_timesteps, timestep_for_sigma)
from fvit.errors import FvitError, UnknownNameError


def test_linear_schedule_is_float64_linspace():
    s = linear_schedule(1000)
    assert s.betas.dtype == torch.float64 and s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    c = cosine_schedule(1000)
    assert c.T == 1000 and bool((c.alphas_cumprod[1:] < c.alphas_cumprod[:-1]).all())


@pytest.mark.parametrize("sigma,t", [(8 / 255, 15), (0.25, 145), (0.5, 259)])
def test_carlini_timesteps_match_facts(sigma, t):
    assert timestep_for_sigma(sigma) == t
    # the defining property: smallest 0-based t with sqrt(1-abar)/sqrt(abar) >= 2 sigma
    r = linear_schedule().noise_to_signal
    assert r[t] >= 2 * sigma > r[t - 1]


def test_fvit_demo_timesteps_match_paper_table3():
    got = [timestep_for_sigma(k / 255, mapping="fvit-demo") for k in (2, 4, 8, 12, 16)]
    assert got == [0, 8, 45, 107, 193]


def test_timestep_clipping_and_errors():
    assert timestep_for_sigma(0) == 0
    assert timestep_for_sigma(1e6) == 999
    assert timestep_for_sigma(1e6, linear_schedule(100)) == 99
    with pytest.raises(FvitError):
        timestep_for_sigma(-0.1)
    with pytest.raises(UnknownNameError):
        timestep_for_sigma(0.1, mapping="nope")
    with pytest.raises(FvitError, match="sigma must be a number"):  # '8/255' is parsed by the CLI only
        timestep_for_sigma("8/255")


def test_cli_timestep():
    from typer.testing import CliRunner

    from fvit.cli import app

    run = lambda *a: CliRunner().invoke(app, ["timestep", *a])
    assert run("--sigma", "8/255").output.strip() == "15"
    assert run("--sigma", "0.5", "--mapping", "carlini").output.strip() == "259"
    assert run("--sigma", "8/255", "--mapping", "fvit-demo").output.strip() == "45"
    bad = run("--sigma", "x/y")
    assert bad.exit_code == 2 and "--sigma: cannot read 'x/y'" in bad.output


def test_respace_keeps_alphas_cumprod():
    s = linear_schedule()
    r = s.respace(250)
    assert r.T == 250 and int(r.timesteps[0]) == 0 and int(r.timesteps[-1]) == 999
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[r.timesteps])


def test_sampler_specs():
    assert parse_sampler("one-shot").spec == "one-shot"
    assert parse_sampler("ddim:4").steps == 4 and parse_sampler("ddim:4").kind == "ddim"
    assert parse_sampler("45-steps") == parse_sampler("ancestral:45")
    assert parse_sampler("fvit-demo").steps == 250
    assert step_timesteps(15, 4) == [15, 10, 5, 0]
    assert step_timesteps(2, 10) == [2, 1, 0]
    for bad in ("ddim:x", "ddim:0", "bogus"):
        with pytest.raises(FvitError):
            parse_sampler(bad)


@pytest.mark.parametrize("spec", ["one-shot", "ddim:5", "ancestral:5", "3-steps", "fvit-demo"])
def test_samplers_recover_x_with_oracle(spec):
    sched = linear_schedule()
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(4, 3, 8, 8, generator=g)
    oracle = OracleDenoiser(x01, sched)
    sigma = 0.25
    t = timestep_for_sigma(sigma, sched)
    x_noisy = 2 * (x01 + sigma * torch.randn(x01.shape, generator=g)) - 1
    out = parse_sampler(spec)(oracle.predict_eps, sched, x_noisy, t, g)
    assert torch.allclose((out + 1) / 2, x01, atol=1e-5)


def test_one_shot_uses_exact_carlini_formula():
    """With a constant-eps denoiser, one-shot = (sqrt(abar) x_noisy - sqrt(1-abar) eps)/sqrt(abar)."""
    sched = linear_schedule()
    t = 15
    x_noisy = torch.full((1, 3, 4, 4), 0.1)
    out = parse_sampler("one-shot")(lambda x, tt: torch.full_like(x, 0.5), sched, x_noisy, t)
    a = sched.alphas_cumprod[t].item()
    assert torch.allclose(out, torch.full_like(out, (a ** 0.5 * 0.1 - (1 - a) ** 0.5 * 0.5) / a ** 0.5), atol=1e-6)
