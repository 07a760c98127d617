"""Losses on the gate's probabilities p (p = probability that a region is FINE).

Every ``target`` in this module is the fraction of regions at the FINE scale.

* :class:`L0GateLoss`: ``(mean(p) - target)^2``; constrains only the average (the baseline).
* :class:`BaSLoss`: batch-shaping (Bejnordi et al., ICLR 2020) against a fixed Beta prior.
* :class:`GBaSLoss`: generalized batch-shaping (the MSViT paper): one BaS term per spatial
  position with a learned Relaxed-Bernoulli prior, a Gaussian hyperprior on the learned means,
  and an L1 on the learned temperatures.

Target annealing (all three): with ``anneal_iters > 0`` the target moves linearly from
``anneal_start`` (default 1.0: all fine, the pretrained ViT's regime) to ``target`` over
``anneal_iters`` training iterations. The iteration is read from mmengine's message hub (the Runner's ``RuntimeInfoHook`` writes it), so it follows
``--resume`` exactly.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import MessageHub, print_log
from mmseg.registry import MODELS
from scipy import special

__all__ = ['batch_shaping', 'beta_cdf', 'L0GateLoss', 'BaSLoss', 'GBaSLoss']


def batch_shaping(values: torch.Tensor, prior_cdf) -> torch.Tensor:
    """Batch-shaping distance between the empirical CDF of ``values`` and a prior CDF.

    Along the last dimension (N samples): sort x_(1) <= ... <= x_(N) and return
    ``(1/N) sum_i (i/(N+1) - F(x_(i)))^2``.

    Args:
        values (Tensor): (..., N).
        prior_cdf (callable): maps the sorted values (..., N) to F(x) (..., N).

    Returns:
        Tensor: (...) one distance per row.
    """
    num = values.shape[-1]
    sorted_values, _ = torch.sort(values, dim=-1)
    ranks = torch.arange(1, num + 1, device=values.device, dtype=values.dtype) / (num + 1)
    return (ranks - prior_cdf(sorted_values)).square().mean(-1)


class _BetaCDF(torch.autograd.Function):
    """Exact regularised incomplete beta I_x(a, b); gradient = Beta pdf, clipped."""

    @staticmethod
    def forward(ctx, x, alpha, beta, max_pdf):
        x_np = x.detach().double().cpu().numpy()
        cdf = torch.from_numpy(special.betainc(alpha, beta, x_np)).to(x.dtype).to(x.device)
        ctx.save_for_backward(x)
        ctx.alpha, ctx.beta, ctx.max_pdf = alpha, beta, max_pdf
        return cdf

    @staticmethod
    def backward(ctx, grad_output):
        (x, ) = ctx.saved_tensors
        alpha, beta = ctx.alpha, ctx.beta
        log_norm = math.lgamma(alpha) + math.lgamma(beta) - math.lgamma(alpha + beta)
        x_safe = x.double().clamp(1e-12, 1 - 1e-12)
        log_pdf = (alpha - 1) * torch.log(x_safe) + (beta - 1) * torch.log1p(-x_safe) - log_norm
        pdf = torch.exp(log_pdf).clamp(max=ctx.max_pdf).to(x.dtype)
        return grad_output * pdf, None, None, None


def beta_cdf(x: torch.Tensor, alpha: float, beta: float, max_pdf: float = 100.0) -> torch.Tensor:
    """CDF of Beta(alpha, beta) at x (exact, via scipy), differentiable in x.

    The gradient is the Beta pdf, clipped at ``max_pdf``: for alpha < 1 or beta < 1 the pdf goes
    to infinity at 0 or 1 and would blow up the update of a gate that is already decided.
    """
    return _BetaCDF.apply(x, float(alpha), float(beta), float(max_pdf))


def _check_fraction(name: str, value: float, owner: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{owner}: {name} is a fraction of regions at the fine scale and must '
                         f'lie in [0, 1], got {value}')


class _AnnealedTarget(nn.Module):
    """Shared target/annealing/loss_weight handling of the gate losses."""

    def __init__(self, target: float, loss_weight: float, anneal_iters: int,
                 anneal_start: float, loss_name: str) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_fraction('target', target, owner)
        _check_fraction('anneal_start', anneal_start, owner)
        if anneal_iters < 0:
            raise ValueError(f'{owner}: anneal_iters must be >= 0, got {anneal_iters}')
        self.target = float(target)
        self.loss_weight = float(loss_weight)
        self.anneal_iters = int(anneal_iters)
        self.anneal_start = float(anneal_start)
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def current_target(self, iteration: Optional[int] = None) -> float:
        """The target at ``iteration`` (default: the Runner's current iteration)."""
        if self.anneal_iters == 0:
            return self.target
        if iteration is None:
            iteration = MessageHub.get_current_instance().get_info('iter', 0)
        progress = min(max(iteration, 0) / self.anneal_iters, 1.0)
        return self.anneal_start + (self.target - self.anneal_start) * progress


@MODELS.register_module()
class L0GateLoss(_AnnealedTarget):
    """Squared distance of the batch-mean fine probability to the target (the baseline).

    It constrains only the average: a gate that ignores the image satisfies it.

    Args:
        target (float): fraction of regions at the fine scale, in [0, 1]. Default: 0.5.
        loss_weight (float): Default: 1.0.
        anneal_iters (int), anneal_start (float): see the module docstring. Default: 0, 1.0.
        loss_name (str): Default: 'loss_gate'.
    """

    def __init__(self, target: float = 0.5, loss_weight: float = 1.0, anneal_iters: int = 0,
                 anneal_start: float = 1.0, loss_name: str = 'loss_gate') -> None:
        super().__init__(target, loss_weight, anneal_iters, anneal_start, loss_name)

    def forward(self, probs: torch.Tensor, iteration: Optional[int] = None) -> torch.Tensor:
        """Args: probs (Tensor): (B, Hc, Wc) fine probabilities. Returns: scalar loss."""
        return self.loss_weight * (probs.mean() - self.current_target(iteration)).square()


@MODELS.register_module()
class BaSLoss(_AnnealedTarget):
    """Batch-shaping against a fixed Beta(alpha, beta) prior (Bejnordi et al., ICLR 2020).

    All gate probabilities of the batch (B*Hc*Wc values) are one sample set. A Beta prior with
    mass near 0 and 1 (alpha, beta < 1) makes the gate decisive and conditional; its mean
    ``alpha / (alpha + beta)`` is the expected fine fraction. With ``target`` given, the prior is
    re-parameterised as Beta(c*target, c*(1-target)) with ``c = alpha + beta`` (so annealing
    moves its mean); without it, alpha and beta are used as they are.

    Args:
        alpha (float): > 0. Default: 0.6.
        beta (float): > 0. Default: 0.4.
        target (float, optional): fine fraction in (0, 1); see above. Default: None.
        max_pdf (float): clip of the CDF's gradient. Default: 100.
        loss_weight, anneal_iters, anneal_start, loss_name: as in
            :class:`L0GateLoss`.
    """

    def __init__(self, alpha: float = 0.6, beta: float = 0.4, target: Optional[float] = None,
                 max_pdf: float = 100.0, loss_weight: float = 1.0, anneal_iters: int = 0,
                 anneal_start: float = 1.0, loss_name: str = 'loss_gate') -> None:
        if alpha <= 0 or beta <= 0:
            raise ValueError(f'BaSLoss: Beta parameters must be > 0, got alpha={alpha}, '
                             f'beta={beta}')
        if max_pdf <= 0:
            raise ValueError(f'BaSLoss: max_pdf must be > 0, got {max_pdf}')
        self.fixed_prior = target is None
        if target is not None and not 0 < target < 1:
            raise ValueError(f'BaSLoss: target must lie in (0, 1) for a Beta prior, got {target}')
        super().__init__(alpha / (alpha + beta) if target is None else target, loss_weight,
                         anneal_iters, anneal_start, loss_name)
        self.alpha, self.beta, self.max_pdf = float(alpha), float(beta), float(max_pdf)

    def prior(self, iteration: Optional[int] = None) -> Tuple[float, float]:
        """(alpha, beta) of the Beta prior in force."""
        if self.fixed_prior and self.anneal_iters == 0:
            return self.alpha, self.beta
        mean = min(max(self.current_target(iteration), 1e-3), 1 - 1e-3)
        concentration = self.alpha + self.beta
        return concentration * mean, concentration * (1 - mean)

    def forward(self, probs: torch.Tensor, iteration: Optional[int] = None) -> torch.Tensor:
        alpha, beta = self.prior(iteration)
        distance = batch_shaping(probs.flatten(),
                                 lambda x: beta_cdf(x, alpha, beta, self.max_pdf))
        return self.loss_weight * distance


@MODELS.register_module()
class GBaSLoss(_AnnealedTarget):
    """Generalized batch-shaping: a learned Relaxed-Bernoulli prior per spatial position.

    For every coarse position k of the training crop's grid, the B gate probabilities at k are
    batch-shaped towards F*_k(x) = sigmoid(tau_k * logit(x) - logit(mu_k)) (x clipped to
    [1e-3, 1 - 1e-3]); mu_k = sigmoid(a_k) = P(x > 0.5) is the expected fine fraction at k and
    tau_k = sigmoid(b_k) < 1 its temperature (small tau = peaky, bimodal). a, b are parameters of
    this module: the optimizer trains them and checkpoints keep them. A hyperprior ties the mu_k
    together: a batch-shaping term on {mu_k} against N(target, hyper_std) sets the global fine
    fraction and how far positions may differ. ::

        L = mean_k BaS(x^k; F*_k) + BaS({mu_k}; N(target, hyper_std)) + tau_weight * mean|tau|

    Grid changes: the parameters live on ``grid_size`` (the coarse cells of the training crop).
    Probabilities on another grid (another crop size; slide windows use the crop size and match)
    are scored against the prior parameters bilinearly resized to that grid, with a warning once;
    the stored parameters are not changed.

    Args:
        grid_size (int | tuple): (Hc, Wc) of the training crop, e.g. (16, 16) for 512 px / 32.
        target (float): global fine fraction, in [0, 1]. Default: 0.5.
        hyper_std (float): std of the Gaussian hyperprior, > 0. Default: 0.1.
        tau_weight (float): weight of the L1 on tau. Default: 0.1.
        init_tau (float): initial tau, in (0, 1). Default: 0.5.
        loss_weight, anneal_iters, anneal_start, loss_name: as in
            :class:`L0GateLoss`.
    """

    def __init__(self,
                 grid_size,
                 target: float = 0.5,
                 hyper_std: float = 0.1,
                 tau_weight: float = 0.1,
                 init_tau: float = 0.5,
                 loss_weight: float = 1.0,
                 anneal_iters: int = 0,
                 anneal_start: float = 1.0,
                 loss_name: str = 'loss_gate') -> None:
        super().__init__(target, loss_weight, anneal_iters, anneal_start, loss_name)
        if hyper_std <= 0:
            raise ValueError(f'GBaSLoss: hyper_std must be > 0, got {hyper_std}')
        if tau_weight < 0:
            raise ValueError(f'GBaSLoss: tau_weight must be >= 0, got {tau_weight}')
        if not 0 < init_tau < 1:
            raise ValueError(f'GBaSLoss: init_tau must lie in (0, 1), got {init_tau}')
        grid = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f'GBaSLoss: grid_size must be (Hc, Wc) >= 1, got {grid_size}')
        self.grid_size = grid
        self.hyper_std = float(hyper_std)
        self.tau_weight = float(tau_weight)
        start = self.anneal_start if anneal_iters else target
        start = min(max(start, 0.02), 0.98)
        self.mu_logit = nn.Parameter(torch.full(grid, math.log(start / (1 - start))))
        self.tau_logit = nn.Parameter(torch.full(grid, math.log(init_tau / (1 - init_tau))))
        self._warned_grids = set()

    @property
    def mu(self) -> torch.Tensor:
        """(Hc, Wc) learned expected fine fraction per position."""
        return torch.sigmoid(self.mu_logit)

    @property
    def tau(self) -> torch.Tensor:
        """(Hc, Wc) learned temperature per position."""
        return torch.sigmoid(self.tau_logit)

    def _params_for(self, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        if grid == self.grid_size:
            return self.mu_logit, self.tau_logit
        if grid not in self._warned_grids:
            self._warned_grids.add(grid)
            print_log(f'GBaSLoss: gate grid {grid} differs from grid_size {self.grid_size}; '
                      'using bilinearly resized prior parameters', logger='current',
                      level=30)
        stacked = torch.stack([self.mu_logit, self.tau_logit])[None]
        resized = F.interpolate(stacked, size=grid, mode='bilinear', align_corners=False)[0]
        return resized[0], resized[1]

    def forward(self, probs: torch.Tensor, iteration: Optional[int] = None) -> torch.Tensor:
        """Args: probs (Tensor): (B, Hc, Wc) fine probabilities. Returns: scalar loss."""
        if probs.dim() != 3:
            raise ValueError(f'GBaSLoss: probs must be (B, Hc, Wc), got {tuple(probs.shape)}')
        mu_logit, tau_logit = self._params_for(tuple(probs.shape[1:]))
        tau = torch.sigmoid(tau_logit).flatten()[:, None]  # (K, 1)
        mu_logit = mu_logit.flatten()[:, None]
        per_position = probs.flatten(1).transpose(0, 1)  # (K, B)

        def relaxed_bernoulli_cdf(x):
            x = x.clamp(1e-3, 1 - 1e-3)
            return torch.sigmoid(tau * torch.logit(x) - mu_logit)

        position_term = batch_shaping(per_position, relaxed_bernoulli_cdf).mean()
        target = self.current_target(iteration)
        mu = torch.sigmoid(mu_logit.flatten())

        hyper_term = batch_shaping(mu, lambda x: torch.special.ndtr((x - target) /
                                                                   self.hyper_std))
        tau_term = self.tau_weight * tau.abs().mean()
        return self.loss_weight * (position_term + hyper_term + tau_term)
