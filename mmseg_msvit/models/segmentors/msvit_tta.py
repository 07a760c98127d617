"""Test-time augmentation whose cost is the sum of all its views."""
from typing import List

from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.utils import SampleList


@MODELS.register_module()
class MSViTSegTTAModel(SegTTAModel):
    """mmseg's :class:`SegTTAModel` (logits of every view averaged) with the cost of every view
    counted: ``msvit_backbone_macs``, ``msvit_decode_macs`` (and so ``msvit_macs``),
    ``msvit_num_tokens`` and ``msvit_forwards`` are summed over the views,
    ``msvit_fine_fraction`` is their mean. mmseg's merge keeps one view's metainfo,
    which would report the cost of a single view. ``tools/test.py --tta`` uses it in place of
    ``SegTTAModel``.
    """

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        merged = super().merge_preds(data_samples_list)
        for sample, views in zip(merged, data_samples_list):
            if not all('msvit_backbone_macs' in view for view in views):
                continue  # not an MSViT segmentor: nothing to sum
            sample.set_metainfo(dict(
                msvit_backbone_macs=sum(float(v.msvit_backbone_macs) for v in views),
                msvit_num_tokens=sum(float(v.msvit_num_tokens) for v in views),
                msvit_forwards=sum(int(v.msvit_forwards) for v in views),
                msvit_fine_fraction=sum(float(v.msvit_fine_fraction) for v in views) /
                len(views),
                msvit_tta_views=len(views)))
            if all('msvit_decode_macs' in view for view in views):
                decode = sum(float(v.msvit_decode_macs) for v in views)
                sample.set_metainfo(dict(msvit_decode_macs=decode,
                                         msvit_macs=sample.msvit_backbone_macs + decode))
            if 'msvit_fine_mask' in sample:  # one view's decisions, not the merged image's
                del sample.msvit_fine_mask
        return merged
