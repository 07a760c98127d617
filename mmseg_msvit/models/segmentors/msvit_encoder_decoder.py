"""EncoderDecoder that trains the MSViT gate with a gate loss and reports what the gate did."""
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import List, Optional, Tuple

import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList, add_prefix
from torch import Tensor

from ..backbones import MSViT
from ..builder import build_component
from ..checkpoints import FRESH_AT_TRAINING_START, check_gate_normalisation
from ..costs import CallCosts, attach_cost, image_cost
from ..features import layout_of
from ..gate_training import (build_gate_loss, build_gate_probe, current_target,
                             frozen_batch_norm, gate_loss_and_stats)
from ..policy import ScalePolicy


#: every region fine (the gate does not run): the dense teacher's and the dense pass's policy
DENSE = ScalePolicy.forced('fine')

#: (model, policy, CallCosts) of the inference call in progress (``_recording_costs``)
_CALL: ContextVar = ContextVar('msvit_inference_call', default=None)


@MODELS.register_module()
class MSViTEncoderDecoder(EncoderDecoder):
    """mmseg's :class:`EncoderDecoder` plus the gate loss of an MSViT backbone.

    Call graph (what differs from mmseg's)::

        loss(): extract_feat_and_layout() -> decode (+ auxiliary) losses
                                          -> gate_loss(sigmoid(layout.gate_logits))
                                          -> gate_probe(self, inputs, samples, layout)
        predict(policy=None): _recording_costs(policy) around mmseg's own predict:
                   inference() -> whole: encode_decode() once / slide: once per window
                   encode_decode(): extract_feat_and_layout(policy) -> decode head, the
                                    forward's cost added to the call's CallCosts
                   -> postprocess_result() -> attach_cost() into each sample's metainfo

    Training: the decode (and auxiliary) losses as usual, plus ``gate_loss`` on the gate
    probabilities of this very forward (taken from the layout the backbone returns), logged
    under the loss's name (``loss_gate``), and ``gate.fine_fraction`` / ``gate.tokens_per_image``.
    When the backbone's scale is forced (dense / all-coarse baselines) there are no gate
    probabilities, and a ``gate_loss`` is refused.

    A scale policy (:class:`~mmseg_msvit.models.ScalePolicy`) passed to ``predict``,
    or ``extract_feat_and_layout`` decides the scales of that call only
    (the study's baselines, a benchmark's sweep); None: the backbone's (the config's).

    Inference (whole or slide): every predicted sample carries, in its metainfo,
    ``msvit_backbone_macs`` (backbone multiply-adds for the image, summed over slide windows, gate
    and pooling included), ``msvit_fine_fraction``, ``msvit_num_tokens`` and ``msvit_forwards``
    (backbone forwards, i.e. slide windows), and, when one forward covered the image (whole mode,
    or a slide of one window), ``msvit_fine_mask`` ((Hc, Wc) bool over the padded input's 32 px
    regions, True = fine); the ``ComplexityMetric`` reports them
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
            tokens" (``tools/analysis_tools/msvit_study.py``, README "The evidence study").
            Default: False.
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
        if not self.with_neck and self.backbone.out_type == 'tokens':
            raise ValueError("MSViTEncoderDecoder: neck=None, but an MSViT backbone returns "
                             "mixed-scale tokens; add neck=dict(type='MixedScaleToDense') (with "
                             'scales=[4, 2, 1, 0.5], in_channels and out_channels for UPerNet), '
                             "or set backbone.out_type='featmap' (dense maps any mmseg neck or "
                             'head reads)')
        self.gate_loss = build_gate_loss(gate_loss, self.backbone, 'MSViTEncoderDecoder')
        self.gate_probe = build_gate_probe(gate_probe, 'MSViTEncoderDecoder')
        self.distill = None if distill is None else build_component(distill)
        if self.distill is not None and not hasattr(self.neck, 'dense_maps'):
            raise ValueError('MSViTEncoderDecoder: distill needs the MixedScaleToDense neck '
                             f'(its dense maps), got {type(self.neck).__name__}')
        # training the gate without any signal but the task loss is the paper's ablation at
        # most: the wrapper that owns the losses warns (once) when its gate trains without one
        self.backbone.declare_gate_training(
            'MSViTEncoderDecoder', self.gate_loss is not None or self.gate_probe is not None)
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
            self.distill.build_teacher(self)

    @property
    def distill_teacher(self) -> Optional[torch.nn.Module]:
        """The frozen dense teacher the distillation loss owns (None: none built)."""
        return None if self.distill is None else self.distill.teacher_model

    @property
    def distill_teacher_sha256(self) -> Optional[str]:
        """sha256 of the teacher's file (None without a teacher)."""
        return None if self.distill is None else self.distill.teacher_sha256

    # ------------------------------------------------------------------ features
    def extract_feat_and_layout(self, inputs: Tensor, policy: Optional[ScalePolicy] = None
                                ) -> Tuple[List, object]:
        """``extract_feat`` plus the layout of the backbone's forward (decisions, gate logits,
        token counts), under ``policy`` (None: the backbone's; given decisions:
        ``ScalePolicy.given(fine_mask, fine_value)``)."""
        uncovered = self.__dict__.get('_uncovered_load')
        if uncovered and not self.training:
            raise uncovered
        feats = self.backbone(inputs, policy)
        layout = layout_of(feats)
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
        with_maps = bool(self.distill.feature_weight)
        task = self.distill.student_task_loss
        scale = self.distill.shared_grad_scale

        def mixed(method: str, *args):  # the mixed-scale pass' calls
            with frozen_batch_norm(self) if self.distill.dense_running_stats else nullcontext():
                return _with_scaled_gradients(self, method, scale, *args) if scale != 1.0 \
                    else getattr(self, method)(*args)

        losses, student_maps, x, seg_logits, layout = mixed('_mixed_pass', inputs,
                                                            data_samples, task)
        if self.distill.teacher == 'self':
            dense_losses, teacher_logits, teacher_maps = self._dense_pass(inputs, data_samples)
            losses.update(dense_losses)
        else:
            teacher_logits, teacher_maps = self.distill.teacher_outputs(inputs, with_maps)
        losses.update(self.distill(seg_logits, teacher_logits,
                                   student_maps if with_maps else None, teacher_maps))
        if self.with_auxiliary_head and task:
            losses.update(mixed('_auxiliary_head_forward_train', x, data_samples))
        return self._add_other_losses(losses, x, layout, inputs, data_samples, task=False)

    def _mixed_pass(self, inputs: Tensor, data_samples: SampleList, task: bool):
        """The distillation's student: the forward under the backbone's own scale decisions;
        its decode loss when ``task``, its dense maps, neck outputs, decode logits and
        layout."""
        feats = self.backbone(inputs)
        layout = layout_of(feats)
        maps, x = self.neck.maps_and_outputs(feats)
        logits = self.decode_head.forward(x)
        losses = add_prefix(self.decode_head.loss_by_feat(logits, data_samples),
                            'decode') if task else {}
        return losses, maps, x, logits, layout

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
                          data_samples: SampleList, task: bool = True) -> dict:
        """Auxiliary head (unless ``task`` is False), gate loss and statistics, gate probe."""
        if self.with_auxiliary_head and task:
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
        the given scale decisions (:meth:`ScalePolicy.given`). Used by the gate probe and
        ``tools/analysis_tools/gate_signal.py``."""
        x, _ = self.extract_feat_and_layout(inputs, ScalePolicy.given(fine_mask, fine_value))
        seg_logits = self.decode_head.forward(x)
        return torch.stack([
            self.parse_losses(self.decode_head.loss_by_feat(seg_logits[i:i + 1], [sample]))[0]
            for i, sample in enumerate(data_samples)
        ])

    # ------------------------------------------------------------------ inference
    # mmseg's own predict -> inference -> whole / slide inference run unchanged; they call
    # encode_decode once per forward (per slide window), which reads the call's policy and adds
    # the forward's cost to the call's record (``CallCosts``), found through a context variable
    # that only this call of this model sees: nothing is left on the module.
    @contextmanager
    def _recording_costs(self, policy: Optional[ScalePolicy] = None):
        """Within the block, every ``encode_decode`` of this model decides the scales under
        ``policy`` (None: the backbone's) and adds its cost to the yielded
        :class:`~mmseg_msvit.models.costs.CallCosts` (the block of one :meth:`predict`; a
        ``predict`` inside it opens its own)."""
        costs = CallCosts()  # (a policy of another type is refused by MSViT.decide_scales)
        token = _CALL.set((self, policy, costs))
        try:
            yield costs
        finally:
            _CALL.reset(token)

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """mmseg's ``encode_decode``; inside :meth:`_recording_costs` under the call's policy,
        with the forward's per-image cost added to the call's record."""
        call = _CALL.get()
        model, policy, costs = call if call is not None else (None, None, None)
        if model is not self:
            policy = costs = None
        x, layout = self.extract_feat_and_layout(inputs, policy)
        seg_logits = self.decode_head.predict(x, batch_img_metas, self.test_cfg)
        if costs is not None:
            cost = self.image_cost(layout)
            decode = self.decode_macs(layout, x)
            if decode is not None:
                cost['decode_macs'] = decode.detach()
            costs.add(cost, layout.fine_mask)
        return seg_logits

    def decode_macs(self, layout, x) -> Optional[Tensor]:
        """(B,) multiply-adds per image of the neck (coarse unpooling, multi-level convolutions)
        and the decode head for one forward (``x``: the neck's outputs), from what ran (mixed
        levels: the blocks at each resolution); None when the neck or the head cannot count
        itself (``macs``): then the tools count the head per input size with mmengine's
        counter."""
        neck_macs = getattr(self.neck, 'macs', None) if self.with_neck else None
        head_macs = getattr(self.decode_head, 'macs', None)
        if neck_macs is None or head_macs is None:
            return None
        return neck_macs(layout, x) + head_macs(x)

    def image_cost(self, layout) -> dict:
        """:func:`~mmseg_msvit.models.costs.image_cost` of one forward's ``layout``: the
        backbone's (the neck's and head's are :meth:`decode_macs`)."""
        return image_cost(self.backbone, layout)

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """mmseg's ``whole_inference`` or ``slide_inference`` by ``test_cfg.mode`` ('whole' when
        not given; a plain dict ``test_cfg`` works too), a clear error for another mode."""
        mode = self.test_cfg.get('mode', 'whole')
        if mode not in ('slide', 'whole'):
            raise ValueError(f"MSViTEncoderDecoder: test_cfg.mode must be 'whole' or 'slide', "
                             f'got {mode!r}')
        if mode == 'slide':
            return self.slide_inference(inputs, batch_img_metas)
        return self.whole_inference(inputs, batch_img_metas)

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None,
                policy: Optional[ScalePolicy] = None) -> SampleList:
        """mmseg's ``predict`` (whole or slide), the cost in every sample's metainfo; under
        ``policy`` for this call (None: the backbone's)."""
        with self._recording_costs(policy) as costs:
            results = super().predict(inputs, data_samples)
        if costs.total is None:
            raise RuntimeError('MSViTEncoderDecoder: predict ran no encode_decode (an inference '
                               'override that bypasses it?), so no cost was recorded')
        return attach_cost(results, costs.total, costs.fine_mask)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, tensor: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class _Bound(torch.nn.Module):
    """``model.method`` as a module's forward (for ``torch.func.functional_call``)."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


def _with_scaled_gradients(model: MSViTEncoderDecoder, method: str, scale: float, *args):
    """``model.method(*args)`` with the gradient reaching the weights the dense pass also uses
    multiplied by ``scale`` (0: none reaches them); the parts only coarse tokens use
    (:data:`~mmseg_msvit.models.checkpoints.reading.FRESH_AT_TRAINING_START`: the gate, the
    coarse-token embedding, the neck's unpooling) get theirs whole. Buffers (BatchNorm
    statistics) are the model's own and update as usual."""
    params = {}
    for name, param in model.named_parameters():
        if not param.requires_grad or name.startswith(FRESH_AT_TRAINING_START):
            continue
        # scaled, never detached, also at 0: a weight that does not require grad would change
        # what gradient checkpointing (``with_cp``) saves against what its recompute sees
        params['model.' + name] = _ScaleGrad.apply(param, scale)
    return torch.func.functional_call(_Bound(model, method), params, args)
