# ADE20K (ADEChallengeData2016 layout), 512x512 crops: mmseg's own dataset config, plus the
# complexity metric (GMACs per image, fine-token fraction) beside mIoU.
_base_ = ['mmseg::_base_/datasets/ade20k.py']
# mmseg's dataset with file checks: a bad image or label is an error naming the file
# (mmseg_msvit.datasets.checked; same arguments, same pipelines)
dataset_type = 'CheckedADE20KDataset'
train_dataloader = dict(dataset=dict(type=dataset_type))
val_dataloader = dict(dataset=dict(type=dataset_type))
test_dataloader = val_dataloader
val_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='ComplexityMetric')]
test_evaluator = val_evaluator
