"""The evidence study's evaluator (``tools/analysis_tools/msvit_study.py``).

:class:`StudyEvaluator` evaluates one trained segmentor under several *decision rules* without
rebuilding it: the scale forced (dense at any input scale, all coarse), its own gate (threshold
or fine budget), a substituted training-free gate (content, random) at a budget, the gate of a
gate file at a budget (one trained on another task: ``tools/transfer_gate.py``'s output), or the
label oracle at a budget. Every evaluation reports mIoU, the IoU of every class, the mean IoU of the
small-object classes, backbone GMACs per image (mean, min, max), whole-model GMACs (backbone
plus the neck, its coarse unpooling and multi-level convolutions included, and the decode head:
as they counted what they ran when they can, ``MixedScaleToDense`` + ``MixedScaleUPerHead``,
else per input size with mmengine's counter), the fine fraction and the fine fraction on
detailed and on uniform regions.

Each image goes through the segmentor's own ``predict`` under the rule's
:class:`~mmseg_msvit.models.ScalePolicy` (one forward over the whole image; the costs are the
``msvit_*`` entries it writes into the sample's metainfo) and mmseg's ``IoUMetric.process`` (the
per-image areas); what stays here is what neither does: the oracle's decisions from each image's
label, the per-class and small-object IoU of the summed areas (float64, unrounded), the decode
head's MACs for heads that cannot count themselves, and the fine fraction on detailed and on
uniform regions.
"""
import time
from contextlib import contextmanager
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.dataset import pseudo_collate

from ...models.gates import ContentGate, RandomGate
from ...models.policy import ScalePolicy, fine_regions_for_budget
from ..gate_alignment import DETAILED, DetailAlignment, region_detail_kinds
from ..macs import dense_decode_macs

#: decision rules an evaluation can use
RULES = ('forced', 'gate', 'content', 'random', 'oracle', 'transfer')


def oracle_fine_mask(label: torch.Tensor, img: torch.Tensor, coarse_patch_size: int,
                     num_fine: int, ignore_index: int = 255) -> torch.Tensor:
    """(1, Hc, Wc) bool: the ``num_fine`` regions a label oracle would split.

    Detailed regions (two or more classes in the ground truth) come first; ties, and the
    remaining budget, go by the content score (pixel energy the coarse token loses), so the
    oracle differs from the content gate only by knowing where the class boundaries are.
    """
    kinds = torch.as_tensor(
        region_detail_kinds(label.cpu().numpy(), coarse_patch_size, ignore_index))
    energy = ContentGate(coarse_patch_size=coarse_patch_size).to(img.device)(img)[0].cpu()
    if kinds.shape != energy.shape:
        raise ValueError(f'oracle_fine_mask: label regions {tuple(kinds.shape)} do not match '
                         f'the image regions {tuple(energy.shape)}; the oracle needs the label '
                         'at the input resolution (scale 1.0)')
    # detailed first: energy is log(...) >= log(eps), far above -1e6
    score = energy + (kinds == DETAILED).float() * 1e6
    flat = score.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(num_fine).indices] = True
    return mask.view(1, *score.shape)


@contextmanager
def whole_image_inference(model):
    """``model.predict`` runs one forward over each whole image while inside (``test_cfg.mode``
    'whole'; the model's own ``test_cfg`` is put back after): the label oracle's decisions and
    the fine mask an evaluation reads are per image, which slide windows do not have."""
    test_cfg = model.test_cfg
    model.test_cfg = ConfigDict(test_cfg or {}, mode='whole')  # mmseg reads test_cfg.mode
    try:
        yield model
    finally:
        model.test_cfg = test_cfg


class StudyEvaluator:
    """Evaluates segmentors on a validation set kept in memory (one copy per input scale).

    Args:
        dataset_cfg (dict): the validation dataset config (its pipeline's ``Resize`` scale is
            replaced per input scale).
        base_size (tuple[int, int]): the test ``Resize`` scale that input scale 1.0 means.
        class_names (Sequence[str]): names of the classes, in label order.
        small_classes (Sequence[str]): classes reported together as the small-object mIoU.
        device (str): where the models run. Default: 'cpu'.
    """

    def __init__(self, dataset_cfg: dict, base_size: Sequence[int], class_names: Sequence[str],
                 small_classes: Sequence[str] = (), device: str = 'cpu') -> None:
        unknown = [name for name in small_classes if name not in class_names]
        if unknown:
            raise ValueError(f'StudyEvaluator: small_classes {unknown} are not among the '
                             f'classes {list(class_names)}')
        self.dataset_cfg = dataset_cfg
        self.base_size = tuple(base_size)
        self.class_names = tuple(class_names)
        self.small_classes = tuple(small_classes)
        self.device = device
        self._cache: Dict[float, list] = {}
        self._head_macs: Dict[tuple, tuple] = {}

    def head_macs(self, model, inputs: torch.Tensor) -> float:
        """MACs of the neck and the decode head for one input of this size (they do not depend
        on the decisions: counted once per model and size, on the dense maps)."""
        key = (id(model), tuple(inputs.shape[-2:]))
        if key not in self._head_macs or self._head_macs[key][0] is not model:
            # the model is kept with its figure: an id is only unique while the model lives
            self._head_macs[key] = (model, float(dense_decode_macs(model, key[1])))
        return self._head_macs[key][1]

    def samples(self, scale: float) -> list:
        """The validation samples resized by ``scale`` (cached)."""
        if scale not in self._cache:
            from mmseg.registry import DATASETS
            cfg = dict(self.dataset_cfg)
            pipeline = []
            for step in cfg['pipeline']:
                step = dict(step)
                if step['type'] == 'Resize':
                    step['scale'] = tuple(int(round(s * scale)) for s in self.base_size)
                pipeline.append(step)
            cfg['pipeline'] = pipeline
            dataset = DATASETS.build(cfg)
            self._cache[scale] = [dataset[index] for index in range(len(dataset))]
        return self._cache[scale]

    @torch.no_grad()
    def evaluate(self, model, rule: str = 'forced', scale: float = 1.0,
                 force_scale: Optional[str] = 'fine', threshold: Optional[float] = None,
                 budget: Optional[float] = None, seed: int = 0,
                 gate_file: Optional[str] = None) -> dict:
        """One pass over the validation set with one decision rule.

        Args:
            model: an eval-mode ``MSViTEncoderDecoder``.
            rule (str): 'forced' (``force_scale``), 'gate' (the model's gate at ``threshold`` or
                ``budget``), 'content' / 'random' (that training-free gate substituted, at
                ``budget``), 'oracle' (label oracle at ``budget``) or 'transfer' (the gate of
                ``gate_file`` substituted, at ``budget``).
            scale (float): input scale relative to ``base_size``.
            seed (int): seeds torch's generator first (the random gate's draws).
            gate_file (str, optional): the gate file of rule 'transfer' (its patch sizes and
                input normalisation are checked against the model's).
        """
        if rule not in RULES:
            raise ValueError(f'StudyEvaluator: rule must be one of {RULES}, got {rule!r}')
        if rule in ('content', 'random', 'oracle', 'transfer') and budget is None:
            raise ValueError(f'StudyEvaluator: rule {rule!r} needs a budget')
        if rule == 'forced' and force_scale not in ('fine', 'coarse'):
            raise ValueError("StudyEvaluator: rule 'forced' needs force_scale 'fine' or "
                             f"'coarse', got {force_scale!r}")
        if (rule == 'transfer') != (gate_file is not None):
            raise ValueError("StudyEvaluator: a gate_file is what rule 'transfer' substitutes "
                             f'(and only it); got rule {rule!r}, gate_file {gate_file!r}')
        torch.manual_seed(seed)
        if rule == 'transfer':
            from ...models.checkpoints import gate_from_file, input_normalisation
            gate = gate_from_file(gate_file, model.backbone,
                                  input_normalisation(model.data_preprocessor))
            policy = ScalePolicy.with_budget(budget, gate=gate.to(self.device).eval())
        else:
            policy = self.policy(model.backbone, rule, force_scale, threshold, budget)
        return self._run(model, scale, rule, budget, policy)

    def policy(self, backbone, rule: str, force_scale: Optional[str] = 'fine',
               threshold: Optional[float] = None,
               budget: Optional[float] = None) -> Optional[ScalePolicy]:
        """The scale policy of a decision rule (None for 'oracle': its decisions are given per
        sample, from the label); the model itself is never changed."""
        if rule == 'forced':
            return ScalePolicy.forced(force_scale)
        if rule == 'gate':
            return ScalePolicy.with_budget(budget) if budget is not None else \
                ScalePolicy.with_threshold(backbone.gate_threshold if threshold is None else
                                           threshold)
        if rule == 'content':
            gate = ContentGate.like(backbone)
        elif rule == 'random':
            gate = RandomGate(coarse_patch_size=backbone.coarse_patch_size)
        else:
            return None
        return ScalePolicy.with_budget(budget, gate=gate.to(self.device).eval())

    def _run(self, model, scale: float, rule: str, budget: Optional[float],
             policy: Optional[ScalePolicy]) -> dict:
        from mmseg.evaluation.metrics import IoUMetric
        ignore_index = 255
        metric = IoUMetric(ignore_index=ignore_index)
        metric.dataset_meta = dict(classes=self.class_names)
        macs, model_macs, fine_fractions = [], [], []
        alignment = DetailAlignment()
        coarse = model.backbone.coarse_patch_size
        start = time.perf_counter()
        samples = self.samples(scale)
        with whole_image_inference(model):
            for sample in samples:
                data = model.data_preprocessor(pseudo_collate([sample]), False)
                inputs, data_samples = data['inputs'].to(self.device), data['data_samples']
                label = data_samples[0].gt_sem_seg.data[0]
                if rule == 'oracle':  # this image's decisions, from its label
                    padded, _ = model.backbone.pad_input(inputs)
                    regions = (padded.shape[-2] // coarse) * (padded.shape[-1] // coarse)
                    policy = ScalePolicy.given(oracle_fine_mask(
                        label, padded, coarse, fine_regions_for_budget(budget, regions)))
                result = model.predict(inputs, data_samples, policy)[0]
                metric.process(data, [result.to_dict()])
                cost = result.metainfo
                macs.append(cost['msvit_backbone_macs'])
                fine_fractions.append(cost['msvit_fine_fraction'])
                if 'msvit_macs' in cost:  # the neck and head counted what they ran
                    model_macs.append(cost['msvit_macs'])
                elif hasattr(getattr(model, 'neck', None), 'dense_maps'):
                    model_macs.append(macs[-1] + self.head_macs(model, inputs))
                if tuple(inputs.shape[-2:]) == tuple(label.shape):  # labels on the input grid
                    alignment.update(cost['msvit_fine_mask'].numpy(),
                                     region_detail_kinds(label.cpu().numpy(), coarse,
                                                         ignore_index))
        seconds = time.perf_counter() - start
        # IoUMetric.compute_metrics would sum the per-image areas in float32 and round to 0.01:
        # the IoU here is of their float64 sums, unrounded (NaN for a class absent everywhere)
        totals = [torch.stack(areas).double().sum(0) for areas in zip(*metric.results)]
        iou = IoUMetric.total_area_to_metrics(*totals, ['mIoU'])['IoU'] * 100
        per_class = {name: float(value) for name, value in zip(self.class_names, iou)}
        small = [per_class[name] for name in self.small_classes]
        gmacs = np.asarray(macs) / 1e9
        model_gmacs = np.asarray(model_macs) / 1e9 if model_macs else np.asarray([np.nan])
        summary = alignment.summary() if alignment.counts.sum() else {}
        return dict(
            mIoU=float(np.nanmean(iou)),
            small_mIoU=float(np.nanmean(small)) if small else float('nan'),
            iou=per_class,
            gmacs=float(gmacs.mean()), gmacs_min=float(gmacs.min()), gmacs_max=float(gmacs.max()),
            model_gmacs=float(model_gmacs.mean()),
            # the neck's coarse unpooling is in model_gmacs, not gmacs (records without this
            # field were written when gmacs held it)
            unpool_in_neck=True,
            fine_fraction=float(np.mean(fine_fractions)),
            fine_on_detailed=summary.get('fine_on_detailed', float('nan')),
            fine_on_uniform=summary.get('fine_on_uniform', float('nan')),
            images=len(samples), eval_seconds=seconds)
