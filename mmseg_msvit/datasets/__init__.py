"""Datasets: the synthetic data generator and its dataset class."""
from .checked import CheckedADE20KDataset, CheckedCityscapesDataset, check_sample_files
from .scenes import SyntheticScenesDataset
from .synthetic import CLS_CLASSES, LAYOUTS, SCENE_CLASSES, make_synthetic

__all__ = [
    'SyntheticScenesDataset', 'make_synthetic', 'SCENE_CLASSES', 'CLS_CLASSES', 'LAYOUTS',
    'CheckedADE20KDataset', 'CheckedCityscapesDataset', 'check_sample_files'
]
