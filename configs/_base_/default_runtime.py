# mmseg's runtime plus our registration: `import mmseg_msvit` makes mmseg's own tools work too.
_base_ = ['mmseg::_base_/default_runtime.py']
custom_imports = dict(imports=['mmseg_msvit'], allow_failed_imports=False)
# mmseg's SegTTAModel, with the GMACs of every test-time view summed (tools/test.py --tta)
tta_model = dict(type='MSViTSegTTAModel')
# Reliability (README, Reliability): exact resume (random state saved and restored), checkpoints
# checked on load (never executed; refused when they do not cover the model), optimizer
# custom_keys checked against the parameters, a stop at the first non-finite loss, the training
# time summed over resumed parts (meta['train_seconds']).
# The checkpoint hook itself is SafeCheckpointHook (schedules below).
# tools/train.py and tools/test.py add any of these a config leaves out.
custom_hooks = [
    dict(type='ExactResumeHook'),
    dict(type='CheckpointCheckHook'),
    dict(type='CustomKeysCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='TrainingTimeHook'),
]
