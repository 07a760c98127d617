"""Segmentation datasets whose bad files are errors that name the file.

mmseg's loading fails on a bad sample deep inside cv2 or torch ("!buf.empty()" for an empty
image; a shape assertion in the loss for a label of another size) or not at all (an RGB picture
of the classes loads as a 3-channel "label"), without saying which file of the dataset it was.
:class:`CheckedSegDatasetMixin` reads the headers of a sample's image and label before its
pipeline runs (cheap: no pixels are decoded) and refuses an empty or unreadable file, a label
with colour channels and a label whose size differs from its image's, naming the files; any
other error of the pipeline is re-raised with the sample's files in the message.

:class:`CheckedADE20KDataset` and :class:`CheckedCityscapesDataset` are mmseg's datasets with these
checks (same arguments); the project's dataset configs use them, and the synthetic scenes'
dataset has them too. Every label's values are checked once per process (the first time it is
loaded, before any crop): a class id outside the dataset's is refused naming the file and the id,
not met at whichever iteration a crop first contains it. Pipelines keep mmseg's transform names, so mmseg's inference APIs, which
look for ``LoadImageFromFile`` / ``LoadAnnotations`` by name, work unchanged.
"""
import functools
import os
import os.path as osp

from mmseg.datasets import ADE20KDataset, CityscapesDataset
from mmseg.registry import DATASETS
from PIL import Image

__all__ = ['CheckedSegDatasetMixin', 'CheckedADE20KDataset', 'CheckedCityscapesDataset',
           'check_sample_files', 'check_label_values', 'allowed_label_values']

#: PIL modes of a label map: one value (class index) per pixel
LABEL_MODES = ('L', 'P', 'I', 'I;16', 'I;16B', 'I;16L', '1')


def _header(path: str, what: str):
    """(width, height, mode) of an image file, reading its header only."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} {path!r} does not exist')
    if os.path.getsize(path) == 0:
        raise ValueError(f'{what} {path!r} is an empty file (0 bytes); replace or remove it')
    try:
        with Image.open(path) as image:
            return image.size[0], image.size[1], image.mode
    except Exception as err:  # noqa: BLE001  (PIL raises many kinds for a non-image)
        raise ValueError(f'{what} {path!r} cannot be read as an image '
                         f'({type(err).__name__}: {err}); replace or remove it') from None


def check_sample_files(img_path: str, seg_map_path=None) -> None:
    """Refuse an empty/unreadable image or label, a label with colour channels, or a label of
    another size than its image (headers only, nothing decoded)."""
    width, height, _ = _header(img_path, 'image')
    if not seg_map_path:
        return
    label_width, label_height, mode = _header(seg_map_path, 'label')
    if mode not in LABEL_MODES:
        raise ValueError(f'label {seg_map_path!r} is a {mode} image: a label map has one '
                         'channel, the class index of each pixel (not an RGB picture of the '
                         'classes); convert it with the dataset\'s palette')
    if (label_width, label_height) != (width, height):
        raise ValueError(f'label {seg_map_path!r} is {label_height}x{label_width} px but its image '
                         f'{img_path!r} is {height}x{width} px; a label map has the size of its '
                         'image')


@functools.lru_cache(maxsize=None)
def _data_errors() -> tuple:
    """What reading a bad file raises (a programming error in a transform is not among them and
    keeps its own type)."""
    errors = [OSError, ValueError, AssertionError, RuntimeError]
    try:
        import cv2
        errors.append(cv2.error)
    except ImportError:  # pragma: no cover (mmcv needs cv2)
        pass
    return tuple(errors)


def allowed_label_values(num_classes: int, reduce_zero_label: bool, ignore_index: int = 255,
                         label_map=None) -> set:
    """The values a label file of a dataset may hold: its classes (shifted by one with
    ``reduce_zero_label``, where 0 is ignored) and the ignore index; with a ``label_map`` (a
    subset of the dataset class's classes) the ids of all the classes it maps."""
    if label_map:
        num_classes = max(num_classes, max(int(k) for k in label_map) + 1)
    allowed = set(range(num_classes + 1 if reduce_zero_label else num_classes))
    allowed.add(int(ignore_index))
    return allowed


def check_label_values(seg_map_path: str, allowed: set) -> None:
    """Refuse a label file holding a value outside ``allowed``, naming the file, the values and
    how many pixels have them (decodes the label once)."""
    import numpy as np
    with Image.open(seg_map_path) as image:
        values, counts = np.unique(np.asarray(image), return_counts=True)
    bad = [(int(v), int(c)) for v, c in zip(values, counts) if int(v) not in allowed]
    if bad:
        shown = ', '.join(f'{v} ({c} px)' for v, c in bad[:5])
        low, high = min(allowed - {255}, default=0), max(allowed - {255}, default=0)
        raise ValueError(f'label {seg_map_path!r} holds class ids outside this dataset\'s '
                         f'{low}..{high} (and 255, ignored): {shown}{" ..." if len(bad) > 5 else ""}; '
                         'fix the file or the dataset\'s classes')


class CheckedSegDatasetMixin:
    """Put in front of an mmseg dataset class: file checks before each sample's pipeline (each
    label's values once per process: the dataset's class ids, the ignore index), and pipeline
    errors from bad data (OS, value, assertion, cv2 errors) named with the sample's files."""

    def _allowed_label_values(self) -> set:
        if getattr(self, '_label_values', None) is None:
            self._label_values = allowed_label_values(
                len(self.metainfo['classes']), bool(self.reduce_zero_label),
                self.ignore_index, self.label_map)
        return self._label_values

    def prepare_data(self, idx):
        info = self.get_data_info(idx)
        img_path, seg_map_path = info.get('img_path'), info.get('seg_map_path')
        if img_path:
            check_sample_files(img_path, seg_map_path)
        checked = self.__dict__.setdefault('_labels_checked', set())
        if seg_map_path and seg_map_path not in checked:
            check_label_values(seg_map_path, self._allowed_label_values())
            checked.add(seg_map_path)
        try:
            return super().prepare_data(idx)
        except _data_errors() as err:
            files = img_path if not seg_map_path else f'{img_path} with label {seg_map_path}'
            first = str(err).strip().splitlines()[0] if str(err).strip() else ''
            raise ValueError(f'{type(self).__name__}: sample {idx} ({files}) failed in the data '
                             f'pipeline: {type(err).__name__}: {first}') from err


@DATASETS.register_module()
class CheckedADE20KDataset(CheckedSegDatasetMixin, ADE20KDataset):
    """mmseg's ``ADE20KDataset`` whose bad files are errors naming the file."""


@DATASETS.register_module()
class CheckedCityscapesDataset(CheckedSegDatasetMixin, CityscapesDataset):
    """mmseg's ``CityscapesDataset`` whose bad files are errors naming the file."""
