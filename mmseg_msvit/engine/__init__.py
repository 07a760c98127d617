"""Runtime pieces for mmengine's Runner: durable checkpoint files and the safety hooks."""
from .fileio import AtomicLocalBackend, atomic_write, atomic_write_bytes, remove_stale_temporaries
from .optim import CPUAutocastOptimWrapper
from .hooks import (RUNTIME_HOOKS, CheckpointCheckHook,
                    CustomKeysCheckHook, ExactResumeHook, FiniteLossHook, check_custom_keys,
                    SafeCheckpointHook, TrainingTimeHook, get_random_state, set_random_state)

__all__ = [
    'CPUAutocastOptimWrapper', 'AtomicLocalBackend', 'atomic_write', 'atomic_write_bytes', 'remove_stale_temporaries',
    'RUNTIME_HOOKS', 'CheckpointCheckHook', 'CustomKeysCheckHook',
    'check_custom_keys', 'ExactResumeHook', 'FiniteLossHook',
    'SafeCheckpointHook', 'TrainingTimeHook', 'get_random_state', 'set_random_state'
]
