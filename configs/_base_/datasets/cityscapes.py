# Cityscapes (leftImg8bit / gtFine labelTrainIds layout), 512x1024 crops: mmseg's own config,
# plus the complexity metric.
_base_ = ['mmseg::_base_/datasets/cityscapes.py']
# mmseg's dataset with file checks: a bad image or label is an error naming the file
# (mmseg_msvit.datasets.checked; same arguments, same pipelines)
dataset_type = 'CheckedCityscapesDataset'
train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
