"""Gate losses: BaS exactness, GBaS convergence, L0, annealing, bad arguments."""
import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from scipy import stats

from mmseg_msvit.models import BaSLoss, GBaSLoss, L0GateLoss
from mmseg_msvit.models.losses import beta_cdf


def test_bas_equals_the_formula_with_the_beta_cdf():
    values = torch.tensor([0.9, 0.05, 0.4, 0.7, 0.2, 0.99], dtype=torch.float64)
    alpha, beta = 0.6, 0.4
    loss = BaSLoss(alpha=alpha, beta=beta)(values)
    ordered = np.sort(values.numpy())
    num = len(ordered)
    expected = np.mean((np.arange(1, num + 1) / (num + 1) - stats.beta.cdf(ordered, alpha,
                                                                          beta))**2)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_beta_cdf_gradient_is_the_clipped_pdf():
    x = torch.tensor([1e-6, 0.1, 0.5, 0.9, 1 - 1e-6], dtype=torch.float64, requires_grad=True)
    beta_cdf(x, 0.5, 0.5, max_pdf=20.0).sum().backward()
    pdf = stats.beta.pdf(x.detach().numpy(), 0.5, 0.5)
    np.testing.assert_allclose(x.grad.numpy(), np.minimum(pdf, 20.0), rtol=1e-8)
    assert x.grad[0] == 20.0  # exploding end clipped


def _optimise_free_logits(loss_module, steps, seed=0):
    torch.manual_seed(seed)
    logits = torch.nn.Parameter(0.1 * torch.randn(256, 7, 7))
    optimizer = torch.optim.Adam([logits, *loss_module.parameters()], lr=0.05)
    for _ in range(steps):
        value = loss_module(torch.sigmoid(logits))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return torch.sigmoid(logits).detach()


@pytest.mark.parametrize('target', [0.25, 0.5])
def test_gbas_alone_reaches_the_target_and_is_bimodal(target):
    loss = GBaSLoss(grid_size=(7, 7), target=target)
    probs = _optimise_free_logits(loss, steps=500)
    fine_fraction = (probs > 0.5).float().mean().item()
    undecided = ((probs > 0.1) & (probs < 0.9)).float().mean().item()
    assert abs(fine_fraction - target) < 0.02, fine_fraction
    assert undecided < 0.3, undecided
    assert abs(loss.mu.mean().item() - target) < 0.02


def test_gbas_prior_parameters_learn_and_are_in_the_state_dict():
    loss = GBaSLoss(grid_size=(2, 3), target=0.3)
    assert set(loss.state_dict()) == {'mu_logit', 'tau_logit'}
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    probs = torch.rand(8, 2, 3, requires_grad=True)
    loss(probs).backward()
    assert probs.grad.abs().sum() > 0
    assert loss.mu_logit.grad.abs().sum() > 0 and loss.tau_logit.grad.abs().sum() > 0
    torch.testing.assert_close(loss.state_dict()['mu_logit'], before['mu_logit'])


def test_gbas_on_another_grid_uses_resized_priors():
    loss = GBaSLoss(grid_size=(4, 4), target=0.5)
    with torch.no_grad():
        loss.mu_logit.copy_(torch.linspace(-2, 2, 16).reshape(4, 4))
    probs = torch.rand(6, 8, 8)
    value = loss(probs)  # 8x8 grid: parameters resized, not changed
    assert torch.isfinite(value)
    assert loss.mu_logit.shape == (4, 4)
    # a constant prior resizes to itself: same loss as a module built for the new grid
    flat, other = GBaSLoss(grid_size=(4, 4)), GBaSLoss(grid_size=(8, 8))
    torch.testing.assert_close(flat(probs), other(probs))


def test_l0_drives_the_mean_to_the_target():
    loss = L0GateLoss(target=0.3)
    probs = _optimise_free_logits(loss, steps=300)
    assert abs(probs.mean().item() - 0.3) < 0.01


def test_target_annealing_follows_the_runner_iteration():
    loss = L0GateLoss(target=0.25, anneal_iters=100)
    assert loss.current_target(0) == 1.0
    assert loss.current_target(50) == pytest.approx(0.625)
    assert loss.current_target(100) == 0.25 and loss.current_target(10**6) == 0.25
    hub = MessageHub.get_instance('anneal_test')
    hub.update_info('iter', 75)
    assert MessageHub.get_current_instance() is hub
    assert loss.current_target() == pytest.approx(0.4375)
    gbas = GBaSLoss(grid_size=3, target=0.25, anneal_iters=10)
    assert gbas.mu.mean().item() == pytest.approx(0.98, abs=1e-6)  # starts near all-fine
    bas = BaSLoss(alpha=0.6, beta=0.4, target=0.25, anneal_iters=10)
    a, b = bas.prior(0)
    assert a / (a + b) == pytest.approx(0.999)
    a, b = bas.prior(10)
    assert a / (a + b) == pytest.approx(0.25)


def test_bad_arguments_get_clear_errors():
    with pytest.raises(ValueError, match=r'target .* \[0, 1\], got 1.5'):
        GBaSLoss(grid_size=4, target=1.5)
    with pytest.raises(ValueError, match='target .* got -0.1'):
        L0GateLoss(target=-0.1)
    with pytest.raises(ValueError, match='hyper_std must be > 0, got 0'):
        GBaSLoss(grid_size=4, hyper_std=0)
    with pytest.raises(ValueError, match='alpha=0, beta=1'):
        BaSLoss(alpha=0, beta=1)
    with pytest.raises(ValueError, match='alpha=1, beta=-2'):
        BaSLoss(alpha=1, beta=-2)
    with pytest.raises(ValueError, match='grid_size'):
        GBaSLoss(grid_size=(0, 4))
    with pytest.raises(ValueError, match='probs must be'):
        GBaSLoss(grid_size=4)(torch.rand(4, 16))
