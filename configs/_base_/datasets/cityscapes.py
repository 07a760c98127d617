# Cityscapes (leftImg8bit / gtFine labelTrainIds layout), 512x1024 crops: mmseg's own config,
# plus the complexity metric.
_base_ = ['mmseg::_base_/datasets/cityscapes.py']
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
