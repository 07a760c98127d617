"""EncoderDecoder that trains the MSViT gate with a gate loss and reports what the gate did."""
import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList, add_prefix
from torch import Tensor

from ..backbones import MSViT
from ..builder import build_component
from ..costs import add_costs, image_cost
from ..gate_training import (UntrainedGateWarning, attach_cost, build_gate_loss,
                             build_gate_probe, check_gate_normalisation, current_target,
                             gate_loss_and_stats, summed_losses)
from ..policy import ScalePolicy


#: every region fine (the gate does not run): the dense teacher's and the dense pass's policy
DENSE = ScalePolicy.forced('fine')


def file_sha256(path: str) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


@MODELS.register_module()
class MSViTEncoderDecoder(EncoderDecoder):
    """mmseg's :class:`EncoderDecoder` plus the gate loss of an MSViT backbone.

    Call graph (what differs from mmseg's)::

        loss(): extract_feat_and_layout() -> decode (+ auxiliary) losses
                                          -> gate_loss(sigmoid(layout.gate_logits))
                                          -> gate_probe(self, inputs, samples, layout)
        predict(policy=None): inference_with_cost() -> whole: encode_decode_with_cost() once
                                         -> slide: encode_decode_with_cost() per window, costs
                                            summed
                   -> postprocess_result() -> attach_cost() into each sample's metainfo

    Training: the decode (and auxiliary) losses as usual, plus ``gate_loss`` on the gate
    probabilities of this very forward (taken from the layout the backbone returns), logged
    under the loss's name (``loss_gate``), and ``gate.fine_fraction`` / ``gate.tokens_per_image``.
    When the backbone's scale is forced (dense / all-coarse baselines) there are no gate
    probabilities, and a ``gate_loss`` is refused.

    A scale policy (:class:`~mmseg_msvit.models.ScalePolicy`) passed to ``predict``,
    ``inference_with_cost`` or ``extract_feat_and_layout`` decides the scales of that call only
    (the study's baselines, a benchmark's sweep); None: the backbone's (the config's).

    Inference (whole or slide): every predicted sample carries, in its metainfo,
    ``msvit_backbone_macs`` (backbone multiply-adds for the image, summed over slide windows, gate
    and pooling included), ``msvit_fine_fraction``, ``msvit_num_tokens`` and ``msvit_forwards``
    (backbone forwards, i.e. slide windows), and in whole mode ``msvit_fine_mask`` ((Hc, Wc) bool
    over the padded input's 32 px regions, True = fine); the ``ComplexityMetric`` reports them
    beside mIoU, and ``mmseg.apis.inference_model`` / ``MMSegInferencer(return_datasamples=True)``
    return them with each prediction.

    Args:
        gate_loss (dict, optional): e.g. ``dict(type='GBaSLoss', grid_size=(16, 16),
            target=0.5)``. None: no gate loss.
        gate_probe (dict, optional): a :class:`~mmseg_msvit.models.gate_training.GateProbe`
            config (our option), e.g. ``dict(type='GateProbe', num_images=4,
            regions_per_image=2)``; it measures with the decode head's own loss. None (default):
            no probe.
        distill (dict, optional): our option: a
            :class:`~mmseg_msvit.models.losses.DenseDistillLoss` config; while the model is
            fine-tuned on mixed tokens, a frozen copy of the dense model (loaded from the loss's
            ``teacher_checkpoint``, built in ``init_weights``, never part of the checkpoints)
            runs every training batch with every region fine, and the student is pulled towards
            its decode logits (and optionally its dense feature maps). Default: None.
        train_gate_only (bool): our option: train the gate (and the gate loss's prior) on an
            otherwise frozen model: every other parameter gets ``requires_grad=False`` and the
            neck, heads and transformer blocks stay in eval mode (BatchNorm statistics and
            dropout frozen). The recipe "train the ViT dense, then learn where it needs fine
            tokens" (``tools/analysis_tools/msvit_study.py``, README "Evidence"). Default: False.
            Other arguments: as EncoderDecoder.
    """

    def __init__(self,
                 *args,
                 gate_loss: Optional[dict] = None,
                 gate_probe: Optional[dict] = None,
                 train_gate_only: bool = False,
                 distill: Optional[dict] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.backbone, MSViT):
            raise TypeError(f'MSViTEncoderDecoder: the backbone {type(self.backbone).__name__} '
                            'is not an MSViT')
        if not self.with_neck:
            raise ValueError("MSViTEncoderDecoder: neck=None, but an MSViT backbone returns "
                             "mixed-scale tokens; add neck=dict(type='MixedScaleToDense') (with "
                             'scales=[4, 2, 1, 0.5], in_channels and out_channels for UPerNet)')
        self.gate_loss = build_gate_loss(gate_loss, self.backbone, 'MSViTEncoderDecoder')
        self.gate_probe = build_gate_probe(gate_probe, 'MSViTEncoderDecoder')
        self.distill = None if distill is None else build_component(distill)
        if self.distill is not None and not hasattr(self.neck, 'dense_maps'):
            raise ValueError('MSViTEncoderDecoder: distill needs the MixedScaleToDense neck '
                             f'(its dense maps), got {type(self.neck).__name__}')
        # the dense teacher: built in init_weights, kept out of parameters and state_dict
        self.__dict__['distill_teacher'] = None
        self.distill_teacher_sha256 = None
        # training the gate without any signal but the task loss is the paper's ablation at
        # most: the wrapper that owns the losses warns (once) when its gate trains without one
        self.untrained_gate = UntrainedGateWarning(
            'MSViTEncoderDecoder', self.gate_loss is not None or self.gate_probe is not None
        ).attach(self.backbone)
        if not isinstance(train_gate_only, bool):
            raise ValueError(f'MSViTEncoderDecoder: train_gate_only must be True or False, got '
                             f'{train_gate_only!r}')
        self.train_gate_only = train_gate_only
        if train_gate_only:
            try:
                self.backbone.freeze_all_but_gate()
            except ValueError as err:
                raise ValueError('MSViTEncoderDecoder: train_gate_only needs a gate with '
                                 'trainable parameters (no force_scale, no frozen or '
                                 'parameter-free gate)') from err
            for name, module in self.named_children():
                if name not in ('backbone', 'gate_loss'):
                    module.requires_grad_(False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Any loader (mmengine's ``load_checkpoint`` in mmseg's ``init_model``, the inferencer,
        ``torch.nn.Module.load_state_dict``): note which weights needed for evaluation the
        loaded dict lacked; :meth:`extract_feat_and_layout` refuses to evaluate until training
        starts (``train()``: a ``load_from`` that starts a run may lack the parts it trains)."""
        from ..checkpoints import uncovered_weights
        own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        self.__dict__['_uncovered_load'] = uncovered_weights(self, own)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.__dict__['_uncovered_load'] = None  # training: loaded weights are a start
        if mode and getattr(self, 'train_gate_only', False):
            for name, module in self.named_children():  # the backbone keeps its own
                if name not in ('backbone', 'gate_loss', 'gate_probe', 'data_preprocessor'):
                    module.eval()
        return self

    def init_weights(self) -> None:
        super().init_weights()
        check_gate_normalisation(self.backbone, self.data_preprocessor)
        if self.distill is not None and self.distill.teacher == 'checkpoint':
            self.__dict__['distill_teacher'] = self.build_dense_teacher(
                self.distill.teacher_checkpoint)
            #: the teacher file's sha256: SafeCheckpointHook records it in every checkpoint and
            #: refuses a resume whose teacher file changed
            self.distill_teacher_sha256 = file_sha256(self.distill.teacher_checkpoint)

    def build_dense_teacher(self, checkpoint: Optional[str]) -> torch.nn.Module:
        """A frozen dense copy of this model's backbone, neck and decode head, loaded from
        ``checkpoint`` (the distillation teacher)."""
        from ..checkpoints import load_model_weights
        if not checkpoint:
            raise ValueError('MSViTEncoderDecoder: distill needs the dense teacher\'s checkpoint: '
                             'set model.distill.teacher_checkpoint, or load_from at the start of '
                             'the run (tools/train.py then uses that file; a --resume without '
                             'load_from finds it in the last checkpoint)')
        teacher = torch.nn.Module()
        teacher.backbone = copy.deepcopy(self.backbone)
        teacher.backbone.coarse_embed = None  # used by coarse tokens only
        teacher.neck = copy.deepcopy(self.neck)
        if getattr(teacher.neck, 'unpool', None) is not None:
            teacher.neck.unpool = None  # used by coarse tokens only
        if getattr(teacher.neck, 'coarse_reduction', None) is not None:
            teacher.neck.coarse_reduction = None  # the dense model decodes densely
        teacher.decode_head = copy.deepcopy(self.decode_head)
        load_model_weights(teacher, checkpoint)
        for param in teacher.parameters():
            param.requires_grad_(False)
        return teacher.eval()

    @torch.no_grad()
    def dense_teacher_outputs(self, inputs: Tensor, with_maps: bool = False):
        """The dense teacher's decode logits (and its taps as dense maps) for ``inputs``."""
        teacher = self.distill_teacher
        if teacher is None:
            raise RuntimeError('MSViTEncoderDecoder: distill is set but the teacher was not '
                               'built; call init_weights() first (the runner does)')
        reference = next(teacher.parameters())
        if reference.device != inputs.device:
            teacher.to(inputs.device)
        maps, x = teacher.neck.maps_and_outputs(teacher.backbone(inputs, DENSE))
        return teacher.decode_head.forward(x), (maps if with_maps else None)

    # ------------------------------------------------------------------ features
    def extract_feat_and_layout(self, inputs: Tensor, policy: Optional[ScalePolicy] = None,
                                **backbone_kwargs) -> Tuple[List, object]:
        """``extract_feat`` plus the layout of the backbone's forward (decisions, gate logits,
        token counts), under ``policy`` (None: the backbone's). ``backbone_kwargs``
        (``fine_mask``, ``fine_value``) go to the backbone."""
        uncovered = self.__dict__.get('_uncovered_load')
        if uncovered and not self.training:
            raise uncovered
        feats = self.backbone(inputs, policy, **backbone_kwargs)
        layout = feats[0].layout
        if self.with_neck:
            feats = self.neck(feats)
        return feats, layout

    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        return self.extract_feat_and_layout(inputs)[0]

    # ------------------------------------------------------------------ training
    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        if self.distill is not None:
            return self._loss_with_distillation(inputs, data_samples)
        x, layout = self.extract_feat_and_layout(inputs)
        losses = dict()
        losses.update(self._decode_head_forward_train(x, data_samples))
        return self._add_other_losses(losses, x, layout, inputs, data_samples)

    def _loss_with_distillation(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """``loss`` with the decode head's forward shared by its loss and the distillation."""
        feats = self.backbone(inputs)
        layout = feats[0].layout
        with_maps = bool(self.distill.feature_weight)
        student_maps, x = self.neck.maps_and_outputs(feats)
        seg_logits = self.decode_head.forward(x)
        losses = add_prefix(self.decode_head.loss_by_feat(seg_logits, data_samples), 'decode')
        if self.distill.teacher == 'self':
            dense_losses, teacher_logits, teacher_maps = self._dense_pass(inputs, data_samples)
            losses.update(dense_losses)
        else:
            teacher_logits, teacher_maps = self.dense_teacher_outputs(inputs, with_maps)
        losses.update(self.distill(seg_logits, teacher_logits,
                                   student_maps if with_maps else None, teacher_maps))
        return self._add_other_losses(losses, x, layout, inputs, data_samples)

    def _dense_pass(self, inputs: Tensor, data_samples: SampleList):
        """In-place distillation's teacher: the model itself with every region fine, trained
        with the task loss (``dense.*``); its logits and dense maps, detached, teach the
        mixed-scale pass."""
        maps, x = self.neck.maps_and_outputs(self.backbone(inputs, DENSE))
        logits = self.decode_head.forward(x)
        losses = add_prefix(self.decode_head.loss_by_feat(logits, data_samples), 'dense.decode')
        if self.with_auxiliary_head:
            losses.update(add_prefix(self._auxiliary_head_forward_train(x, data_samples),
                                     'dense'))
        return losses, logits.detach(), [m.detach() for m in maps]

    def _add_other_losses(self, losses: dict, x, layout, inputs: Tensor,
                          data_samples: SampleList) -> dict:
        """Auxiliary head, gate loss and statistics, gate probe."""
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(x, data_samples))
        losses.update(gate_loss_and_stats(layout, self.gate_loss))
        if self.gate_probe is not None and layout.gate_logits is not None:
            losses[self.gate_probe.loss_name] = self.gate_probe(
                self, inputs, data_samples, layout, current_target(self.gate_loss))
        return losses

    def task_loss_per_image(self,
                            inputs: Tensor,
                            data_samples: SampleList,
                            fine_mask: Tensor,
                            fine_value: Optional[Tensor] = None) -> Tensor:
        """(N,) the decode head's own loss (sampler, class weights, loss terms) per image, with
        the given scale decisions (see ``MSViT.forward``). Used by the gate probe and
        ``tools/analysis_tools/gate_signal.py``."""
        x, _ = self.extract_feat_and_layout(inputs, fine_mask=fine_mask, fine_value=fine_value)
        seg_logits = self.decode_head.forward(x)
        return torch.stack([
            summed_losses(self.decode_head.loss_by_feat(seg_logits[i:i + 1], [sample]))
            for i, sample in enumerate(data_samples)
        ])

    # ------------------------------------------------------------------ inference
    def encode_decode_with_cost(self, inputs: Tensor, batch_img_metas: List[dict],
                                policy: Optional[ScalePolicy] = None) -> Tuple[Tensor, dict]:
        """``encode_decode`` plus the per-image cost of this forward
        (:func:`mmseg_msvit.models.costs.image_cost`)."""
        x, layout = self.extract_feat_and_layout(inputs, policy)
        seg_logits = self.decode_head.predict(x, batch_img_metas, self.test_cfg)
        cost = self.image_cost(layout)
        decode = self.decode_macs(layout, x)
        if decode is not None:
            cost['decode_macs'] = decode.detach()
        cost['fine_mask'] = layout.fine_mask.detach()
        return seg_logits, cost

    def decode_macs(self, layout, x) -> Optional[Tensor]:
        """(B,) multiply-adds per image of the neck's rescale and the decode head for one
        forward (``x``: the neck's outputs), from what ran (mixed levels: the blocks at each
        resolution); None when the neck or the head cannot count itself (``macs``): then the
        tools count the head per input size with mmengine's counter."""
        neck_macs = getattr(self.neck, 'macs', None) if self.with_neck else None
        head_macs = getattr(self.decode_head, 'macs', None)
        if neck_macs is None or head_macs is None:
            return None
        return neck_macs(layout, x) + head_macs(x)

    def image_cost(self, layout) -> dict:
        """:func:`~mmseg_msvit.models.costs.image_cost` of one forward's ``layout`` (the neck's
        coarse unpooling, when enabled, included)."""
        return image_cost(self.backbone, layout, self.neck if self.with_neck else None)

    def inference_with_cost(self, inputs: Tensor, batch_img_metas: List[dict],
                            policy: Optional[ScalePolicy] = None) -> Tuple[Tensor, dict]:
        """``inference`` (whole or slide) plus the per-image cost summed over its forwards,
        under ``policy`` (None: the backbone's)."""
        mode = self.test_cfg.get('mode', 'whole')
        if mode not in ('slide', 'whole'):
            raise ValueError(f"MSViTEncoderDecoder: test_cfg.mode must be 'whole' or 'slide', "
                             f'got {mode!r}')
        if mode == 'whole':
            return self.encode_decode_with_cost(inputs, batch_img_metas, policy)
        return self._slide_with_cost(inputs, batch_img_metas, policy)

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self.inference_with_cost(inputs, batch_img_metas)[0]

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self._slide_with_cost(inputs, batch_img_metas)[0]

    def _slide_with_cost(self, inputs: Tensor, batch_img_metas: List[dict],
                         policy: Optional[ScalePolicy] = None) -> Tuple[Tensor, dict]:
        """mmseg's sliding-window inference (same windows, same averaging), summing the cost of
        every window."""
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        batch_size, _, h_img, w_img = inputs.size()
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = inputs.new_zeros((batch_size, self.out_channels, h_img, w_img))
        count_mat = inputs.new_zeros((batch_size, 1, h_img, w_img))
        cost = None
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop_img = inputs[:, :, y1:y2, x1:x2]
                batch_img_metas[0]['img_shape'] = crop_img.shape[2:]
                crop_seg_logit, crop_cost = self.encode_decode_with_cost(
                    crop_img, batch_img_metas, policy)
                crop_cost.pop('fine_mask')  # one per window: not one image's map
                cost = add_costs(cost, crop_cost)
                preds += F.pad(crop_seg_logit,
                               (int(x1), int(preds.shape[3] - x2), int(y1),
                                int(preds.shape[2] - y2)))
                count_mat[:, :, y1:y2, x1:x2] += 1
        assert (count_mat == 0).sum() == 0
        return preds / count_mat, cost

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None,
                policy: Optional[ScalePolicy] = None) -> SampleList:
        """mmseg's ``predict`` (whole or slide), the cost in every sample's metainfo; under
        ``policy`` for this call (None: the backbone's)."""
        if data_samples is not None:
            batch_img_metas = [data_sample.metainfo for data_sample in data_samples]
        else:
            batch_img_metas = [
                dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                     pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])
            ] * inputs.shape[0]
        seg_logits, cost = self.inference_with_cost(inputs, batch_img_metas, policy)
        return attach_cost(self.postprocess_result(seg_logits, data_samples), cost)
