# ADE20K (ADEChallengeData2016 layout), 512x512 crops: mmseg's own dataset config, plus the
# complexity metric (GMACs per image, fine-token fraction) beside mIoU.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
