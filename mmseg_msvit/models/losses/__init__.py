from .distill_losses import DenseDistillLoss
from .gate_losses import BaSLoss, GBaSLoss, L0GateLoss, batch_shaping, beta_cdf

__all__ = ['GBaSLoss', 'BaSLoss', 'L0GateLoss', 'DenseDistillLoss', 'batch_shaping', 'beta_cdf']
