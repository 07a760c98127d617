"""How one forward decides the scale of every region: an immutable :class:`ScalePolicy` in, one
:class:`ScaleDecision` out.

The backbone keeps the policy its config describes (``MSViT.policy``) and uses it when a call
gives none; a caller that wants another rule for one forward (the study's baselines, a benchmark's
sweep, the dense teacher, an analysis with given decisions) passes its own policy to that call
(``backbone(img, policy=...)``, ``segmentor.predict(inputs, samples, policy=...)``), and nothing
on the model changes. As timm passes per-call options to ``forward_intermediates`` rather than
setting them on the model.
"""
import dataclasses
import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from .arguments import check_fine_budget, check_gate_threshold, check_train_budget_range


def _relaxed_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(logit + logistic noise) / temperature``: a sample of the relaxed Bernoulli in logit
    space (the Gumbel-sigmoid's argument).

    Written out rather than ``torch.distributions.LogitRelaxedBernoulli(...).rsample()``, which
    computes the same formula from ``logit(clamp(sigmoid(logit)))``: that clamp to the dtype's
    eps cuts the noise and zeroes the gradient of confident logits (beyond |logit| ~ 16 in
    float32, ~ 5 in bfloat16 under --amp). A non-finite logit passes through to the loss, where
    ``FiniteLossHook`` stops the run naming the iteration."""
    uniform = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    return (logits + torch.log(uniform) - torch.log1p(-uniform)) / temperature


def threshold_decisions(logits: torch.Tensor, threshold: float,
                        temperature: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Threshold mode: a region is fine when ``sigmoid(logit) > threshold``.

    With a ``temperature`` (a gate in training) the Gumbel-sigmoid relaxation of the paper:
    ``soft = sigmoid((logit + logistic noise) / temperature)`` (a relaxed Bernoulli sample), the
    decision ``soft > 0.5`` and a straight-through value (forward: the hard 0/1 decision,
    backward: the gradient of ``soft``). Without one: the hard decisions, no gradient.

    Returns:
        tuple: ``fine_mask`` (B, Hc, Wc) bool and ``fine_value`` (B, Hc, Wc) float equal to it.
    """
    if temperature is None:
        fine_mask = torch.sigmoid(logits) > threshold
        return fine_mask, fine_mask.to(logits.dtype)
    soft = torch.sigmoid(_relaxed_logits(logits, temperature))
    hard = (soft > 0.5).to(soft.dtype)
    return hard.bool(), hard + soft - soft.detach()


def budget_decisions(logits: torch.Tensor, num_fine: int,
                     temperature: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Budget mode: exactly ``num_fine`` fine regions per image, those of the highest scores.

    With a ``temperature`` (a gate in training) the scores get logistic noise first, as the
    relaxation of threshold mode, and the decisions a straight-through value (forward: the hard
    top-k mask, backward: the gradient of ``sigmoid((logit + noise) / temperature)``), so the
    task loss and the gate losses still train the gate. ``num_fine`` is a Python int (from
    shapes): every image of a batch has the same token count, shapes are static.

    Returns:
        tuple: ``fine_mask`` (B, Hc, Wc) bool and ``fine_value`` (B, Hc, Wc) float.
    """
    scores = logits
    if temperature is not None:  # (logit + noise) / temperature: ranked as logit + noise
        scores = _relaxed_logits(logits, temperature)
    flat = scores.flatten(1)
    hard = torch.zeros_like(flat).scatter_(1, flat.topk(num_fine, dim=1).indices, 1.0)
    hard = hard.view_as(logits)
    if temperature is not None and logits.requires_grad:
        soft = torch.sigmoid(scores)
        return hard.bool(), hard + soft - soft.detach()
    return hard.bool(), hard


def relaxation_temperature(gate: nn.Module) -> Optional[float]:
    """The temperature of the relaxation noise while ``gate`` trains (in training mode, with
    parameters that take gradient, and a ``temperature``); None otherwise: hard decisions."""
    temperature = getattr(gate, 'temperature', None)
    if temperature is None or not gate.training or not any(
            p.requires_grad for p in gate.parameters()):
        return None
    return temperature


#: True inside :func:`counting_one_forward`
_COUNTING_ONE_FORWARD: ContextVar = ContextVar('msvit_counting_one_forward', default=False)


@contextmanager
def counting_one_forward():
    """Within the block a tracer may freeze a threshold-mode token count, which depends on the
    image: for analysis of ONE forward only (mmengine's op counter in
    :func:`mmseg_msvit.analysis.count_macs_with_mmengine`). Export and deployment never enter it,
    so they keep refusing threshold mode."""
    token = _COUNTING_ONE_FORWARD.set(True)
    try:
        yield
    finally:
        _COUNTING_ONE_FORWARD.reset(token)


def is_counting_one_forward() -> bool:
    """Inside :func:`counting_one_forward`."""
    return _COUNTING_ONE_FORWARD.get()


def fine_regions_for_budget(budget: float, num_regions: int) -> int:
    """Fine regions per image in budget mode: ``budget`` times ``num_regions``, rounded half up,
    and at least one (a budget is > 0)."""
    return max(1, int(math.floor(budget * num_regions + 0.5)))


@dataclasses.dataclass(frozen=True, eq=False)
class ScalePolicy:
    """One rule for deciding every region: fine (split into S_c/S_f squared tokens) or coarse.

    A policy is ONE of four modes (:attr:`mode`), and holds the fields of that mode only: fields
    of two modes together (a forced scale with a budget, a given mask with a gate, ...) are
    refused on construction, so no precedence is ever applied. Build one with the class
    methods (:meth:`forced`, :meth:`with_budget`, :meth:`with_threshold`, :meth:`given`) or
    derive one with :meth:`replace`; every field is checked on construction and cannot be set
    afterwards.

    * given: ``fine_mask`` (and ``fine_value``);
    * forced: ``force_scale``;
    * budget: ``budget`` (and ``train_budget_range``, ``gate``);
    * threshold: ``threshold`` (default 0.5) and ``gate``: what is left when none of the above
      is given.

    Attributes:
        force_scale (str, optional): 'fine' (every region fine, the gate does not run: the dense
            ViT/S_f) or 'coarse'.
        threshold (float, optional): threshold mode: a region is fine when the gate's
            probability exceeds it, in [0, 1]. None: 0.5 in threshold mode.
        budget (float, optional): budget mode: every image keeps ``round(budget * regions)``
            fine regions (half up, at least one), in (0, 1]. None: threshold mode.
        train_budget_range (tuple, optional): budget mode: in training each forward draws its
            budget uniformly from ``(low, high)``.
        fine_mask (Tensor, optional): (B, Hc, Wc) bool decisions given by the caller (the gate
            does not run).
        fine_value (Tensor, optional): with ``fine_mask``: a float tensor equal to it that
            carries gradient (the straight-through value; ``gate_signal.py``).
        gate (nn.Module, optional): the gate that scores regions instead of the backbone's
            (a training-free :class:`~mmseg_msvit.models.gates.ContentGate` or
            ``RandomGate`` evaluated on a trained model); its MACs are the ones counted.
    """
    force_scale: Optional[str] = None
    threshold: Optional[float] = None
    budget: Optional[float] = None
    train_budget_range: Optional[Tuple[float, float]] = None
    fine_mask: Optional[torch.Tensor] = None
    fine_value: Optional[torch.Tensor] = None
    gate: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        if self.force_scale not in (None, 'fine', 'coarse'):
            raise ValueError(f"MSViT: force_scale must be None, 'fine' or 'coarse', got "
                             f'{self.force_scale!r}')
        if self.threshold is not None:
            object.__setattr__(self, 'threshold', check_gate_threshold(self.threshold))
        object.__setattr__(self, 'budget', check_fine_budget(self.budget))
        object.__setattr__(self, 'train_budget_range',
                           check_train_budget_range(self.train_budget_range, self.budget))
        mask, value = self.fine_mask, self.fine_value
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
            kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f'MSViT: fine_mask must be a bool tensor (True = fine), got {kind}; '
                             'pass e.g. `mask > 0.5` rather than a float or int mask')
        if value is not None and (not isinstance(value, torch.Tensor) or mask is None or
                                  value.shape != mask.shape):
            given = 'no fine_mask' if mask is None else \
                f'fine_mask {tuple(mask.shape)}'
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else \
                type(value).__name__
            raise ValueError('MSViT: fine_value needs a fine_mask of the same shape, got '
                             f'fine_value {shape} and {given}')
        if value is not None and (not value.is_floating_point() or not torch.equal(
                value.detach() == 1, mask) or not torch.equal(value.detach() == 0, ~mask)):
            raise ValueError('MSViT: fine_value must be a floating-point tensor EQUAL to fine_mask '
                             '(1.0 where fine, 0.0 where coarse) that carries the gradient, got '
                             f'{value.dtype} values {value.detach().unique()[:6].tolist()}; e.g. '
                             'fine_mask.float().requires_grad_()')

        self._refuse_mixed_modes()

    def _refuse_mixed_modes(self) -> None:
        """Fields of two modes together are refused, naming them (a training range without
        its budget is refused by :func:`check_train_budget_range` first)."""
        present = dict(fine_mask=self.fine_mask is not None,
                       force_scale=self.force_scale is not None,
                       budget=self.budget is not None, threshold=self.threshold is not None,
                       gate=self.gate is not None)
        modes = dict(given=['fine_mask'], forced=['force_scale'], budget=['budget'],
                     threshold=['threshold'])
        chosen = [mode for mode, fields in modes.items() if any(present[f] for f in fields)]
        if present['gate'] and chosen and chosen[0] in ('given', 'forced'):
            chosen.append('a gate')
        if len(chosen) > 1:
            fields = [name for name, here in present.items() if here]
            raise ValueError(f'ScalePolicy: one mode per policy, got fields of {chosen} '
                             f'together ({", ".join(fields)}); build it with ScalePolicy.forced, '
                             '.with_budget, .with_threshold or .given')

    # ------------------------------------------------------------------ constructors
    @classmethod
    def forced(cls, scale: str) -> 'ScalePolicy':
        """Every region ``scale`` ('fine': the dense ViT/S_f; 'coarse')."""
        return cls(force_scale=scale)

    @classmethod
    def with_budget(cls, budget: float, gate: Optional[nn.Module] = None,
                    train_budget_range: Optional[Tuple[float, float]] = None) -> 'ScalePolicy':
        """The gate's (or ``gate``'s) top ``budget`` share of regions per image (in training a
        budget drawn from ``train_budget_range`` when given)."""
        return cls(budget=budget, gate=gate, train_budget_range=train_budget_range)

    @classmethod
    def with_threshold(cls, threshold: Optional[float] = None,
                       gate: Optional[nn.Module] = None) -> 'ScalePolicy':
        """The gate's (or ``gate``'s) probability above ``threshold`` (None: 0.5)."""
        return cls(threshold=threshold, gate=gate)

    @classmethod
    def given(cls, fine_mask: torch.Tensor,
              fine_value: Optional[torch.Tensor] = None) -> 'ScalePolicy':
        """The caller's decisions."""
        return cls(fine_mask=fine_mask, fine_value=fine_value)

    def replace(self, **changes) -> 'ScalePolicy':
        """A copy with ``changes`` (checked as on construction)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ queries
    @property
    def mode(self) -> str:
        """'given', 'forced', 'budget' or 'threshold' (the one mode whose fields are set)."""
        if self.fine_mask is not None:
            return 'given'
        if self.force_scale is not None:
            return 'forced'
        return 'threshold' if self.budget is None else 'budget'

    def draw_budget(self, training: bool, draw_range: Optional[Tuple[float, float]] = None
                    ) -> Optional[float]:
        """The budget of one forward: ``budget``, or in training with ``train_budget_range`` a
        uniform draw from that range (torch's generator).

        ``draw_range``: the range of the model's own policy. In training a forward draws once
        whenever this policy or the model's has a range, whatever the mode, and uses the draw
        only in budget mode with a range of its own, so the random stream is the same in every
        mode and the runs recorded in docs/study.md reproduce.
        """
        own = self.train_budget_range
        draw_range = own if own is not None else draw_range
        if not training or draw_range is None:
            return self.budget
        low, high = draw_range
        drawn = low + (high - low) * float(torch.rand(()))
        return drawn if own is not None and self.mode == 'budget' else self.budget

    @property
    def decision_threshold(self) -> float:
        """Threshold mode's threshold: ``threshold``, or 0.5 when not given."""
        return 0.5 if self.threshold is None else self.threshold

    def num_fine_regions(self, num_regions: int, budget: Optional[float] = None) -> int:
        """:func:`fine_regions_for_budget` of ``budget`` (default this policy's)."""
        budget = self.budget if budget is None else budget
        if budget is None:
            raise ValueError('ScalePolicy: num_fine_regions needs a budget (budget mode), this '
                             f'policy is in {self.mode} mode')
        return fine_regions_for_budget(budget, num_regions)

    def static_num_tokens(self, num_regions: int, tokens_per_fine: int,
                          budget: Optional[float] = None) -> Optional[int]:
        """Patch tokens of EVERY image when known from shapes alone (forced scale, budget
        mode); None when they depend on the image (threshold mode, given decisions)."""
        mode = self.mode
        if mode == 'forced':
            return num_regions * (tokens_per_fine if self.force_scale == 'fine' else 1)
        if mode == 'budget':
            return num_regions + (tokens_per_fine - 1) * self.num_fine_regions(num_regions,
                                                                               budget)
        return None


class ScaleDecision(NamedTuple):
    """What a policy decided for one batch (``MSViT.decide_scales``): everything the tokenizer,
    the losses and the cost counting need, computed once.

    Attributes:
        fine_mask (Tensor): (B, Hc, Wc) bool, True = fine.
        fine_value (Tensor | None): the straight-through value (equal to ``fine_mask``; carries
            the gate's gradient in training), or None.
        gate_logits (Tensor | None): the scoring gate's logits, None when no gate ran.
        num_tokens (Tensor): (B,) long, patch tokens per image (CLS excluded).
        static_num_tokens (int | None): the same count as a Python int when it is known from
            shapes (forced scale, budget mode): no host read, static shapes for export.
        gate_macs_per_region (int): MACs of the gate that ran, per region (0 when none ran).
    """
    fine_mask: torch.Tensor
    fine_value: Optional[torch.Tensor]
    gate_logits: Optional[torch.Tensor]
    num_tokens: torch.Tensor
    static_num_tokens: Optional[int]
    gate_macs_per_region: int = 0

    @classmethod
    def from_mask(cls, fine_mask: torch.Tensor, tokens_per_fine: int,
                  fine_value: Optional[torch.Tensor] = None,
                  gate_logits: Optional[torch.Tensor] = None,
                  static_num_tokens: Optional[int] = None,
                  gate_macs_per_region: int = 0) -> 'ScaleDecision':
        """A decision from a mask; the token count follows from it (a region costs one token,
        or ``tokens_per_fine`` when fine)."""
        regions = fine_mask.shape[1] * fine_mask.shape[2]
        num_tokens = regions + (tokens_per_fine - 1) * fine_mask.flatten(1).sum(1)
        return cls(fine_mask, fine_value, gate_logits, num_tokens, static_num_tokens,
                   gate_macs_per_region)
