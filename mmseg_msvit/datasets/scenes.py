"""Dataset class for the synthetic scenes (see :mod:`mmseg_msvit.datasets.synthetic`)."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .checked import CheckedSegDatasetMixin
from .synthetic import SCENE_CLASSES, SCENE_PALETTE


@DATASETS.register_module()
class SyntheticScenesDataset(CheckedSegDatasetMixin, BaseSegDataset):
    """The synthetic scenes with their own class names (bad files are errors naming the file:
    :class:`~mmseg_msvit.datasets.checked.CheckedSegDatasetMixin`).

    Defaults read the ADE20K layout (``.jpg`` images, ``.png`` labels with 0 = other, which
    ``reduce_zero_label=True`` turns into the ignore index 255). For the Cityscapes layout pass
    ``img_suffix='_leftImg8bit.png', seg_map_suffix='_gtFine_labelTrainIds.png',
    reduce_zero_label=False``.
    """
    METAINFO = dict(classes=SCENE_CLASSES, palette=SCENE_PALETTE)

    def __init__(self,
                 img_suffix='.jpg',
                 seg_map_suffix='.png',
                 reduce_zero_label=True,
                 **kwargs) -> None:
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs)

    def load_data_list(self) -> list:
        data_list = super().load_data_list()
        if not data_list:
            folder = self.data_prefix.get('img_path', self.data_root)
            raise FileNotFoundError(
                f'SyntheticScenesDataset: no images ending in {self.img_suffix!r} under '
                f'{folder!r}; create the data with tools/dataset_converters/make_synthetic.py '
                'or point data_root at it')
        return data_list
