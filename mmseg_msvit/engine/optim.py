"""Mixed precision on a CPU: mmengine's ``AmpOptimWrapper`` refuses to run without a GPU."""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmseg.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """An ``OptimWrapper`` whose forward runs under ``torch.autocast('cpu', dtype)``.

    bfloat16 has float32's exponent range, so no loss scaling is needed (unlike fp16 on a GPU);
    weights, gradients and the optimizer state stay float32. ``tools/train.py --amp`` picks it
    when no GPU is available (mmengine's ``AmpOptimWrapper`` asserts a GPU/NPU/MLU).

    Args:
        dtype (str): 'bfloat16' (default) or 'float16'.
        **kwargs: as ``OptimWrapper``.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        if dtype not in ('bfloat16', 'float16'):
            raise ValueError(f"CPUAutocastOptimWrapper: dtype must be 'bfloat16' or 'float16', "
                             f'got {dtype!r}')
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
