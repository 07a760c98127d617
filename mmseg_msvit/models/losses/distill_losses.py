"""Distillation from the dense model while the transformer is fine-tuned on mixed tokens (our
option, not the paper's).

Fine-tuning a dense ViT on mixed-scale tokens teaches it to read coarse tokens, but with the task
loss alone it also forgets what the dense model knew (docs/study.md, "How the recipe was
found"). A frozen copy of the dense model (the same weights the
fine-tuning starts from), run on every training batch with every region fine, says what the
mixed-scale model should output; the student is pulled towards it per pixel.
"""
import copy
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from ..arguments import check_bool

__all__ = ['DenseDistillLoss']


@MODELS.register_module()
class DenseDistillLoss(nn.Module):
    """Per-pixel distillation from a frozen dense teacher (configured like ``gate_loss``).

    ``MSViTEncoderDecoder(distill=dict(type='DenseDistillLoss', ...))`` has this loss build its
    teacher in ``init_weights`` (:meth:`build_teacher`): the student's backbone, neck and decode
    head copied in their dense form and loaded from ``teacher_checkpoint`` (a checkpoint of the
    dense model; ``tools/train.py`` and the study fill it from ``load_from`` when it is not
    given). The loss owns it (:attr:`teacher_model`) the way an mmrazor distiller owns its
    teacher: moved and cast with the model (``.to()``, ``.cuda()``, ``.half()``), but no
    parameter of it (no optimizer, no DistributedDataParallel), no entry of its checkpoints,
    always in eval mode, run without gradient with every region fine. Its forward is part of
    each training iteration (counted in training time).

    Loss terms (added to the segmentor's losses):

    * ``loss_distill``: KL(teacher || student) of the decode logits per pixel, at temperature
      ``temperature`` (softmax over classes of logits / T), averaged over pixels and multiplied by
      T^2 (the usual scaling, so the gradient size does not depend on T), times ``loss_weight``;
    * ``loss_distill_feat`` (when ``feature_weight > 0``): mean squared difference of the
      backbone taps rebuilt as dense maps (each coarse token on its 2x2 cells), divided by the
      teacher map's mean square, averaged over taps, times ``feature_weight``.

    With ``teacher='self'`` (in-place distillation, as slimmable networks train their smaller
    widths) there is no frozen copy: every training batch also runs through the model itself with
    every region fine, that dense pass gets the task loss (logged as ``dense.*``), and its logits
    and maps, detached, teach the mixed-scale pass. The dense model then keeps learning during
    the fine-tuning instead of staying where it started, at the cost of a second forward and
    backward per iteration.

    Args:
        teacher (str): 'checkpoint' (a frozen copy loaded from ``teacher_checkpoint``) or 'self'.
            Default: 'checkpoint'.
        teacher_checkpoint (str, optional): the dense model's checkpoint (``teacher=
            'checkpoint'``). Default: None (filled from ``load_from`` by ``tools/train.py``; an
            error at ``init_weights`` otherwise).
        temperature (float): > 0. Default: 1.0.
        loss_weight (float): weight of the logit term (>= 0). Default: 1.0.
        feature_weight (float): weight of the feature term (>= 0). Default: 0.0.
        student_task_loss (bool): whether the mixed-scale pass also gets the task loss (its
            decode and auxiliary heads' losses). False (``teacher='self'`` only): it learns from
            the dense pass alone, as slimmable networks train their smaller widths. Default:
            True.
        shared_grad_scale (float): in [0, 1] (``teacher='self'`` only): what the mixed-scale
            pass' losses send back into the weights the dense pass also uses (transformer,
            embeddings, neck, heads) is multiplied by this. 1: both passes train them alike.
            0: the mixed-scale pass trains only the parts coarse tokens alone use (the gate,
            the coarse-token embedding, the neck's unpooling), so the shared weights get the
            dense pass' gradient alone, as a dense model trained as long would; with
            ``dense_running_stats`` too, budget 1.0 of the checkpoint is that dense model.
            Default: 1.0.
        dense_running_stats (bool): ``teacher='self'`` only: BatchNorm running statistics
            (what evaluation normalises with) are recorded from the dense pass alone; the
            mixed-scale pass normalises with its batch's statistics but does not record them.
            False: both passes record theirs, and a budget-1.0 evaluation normalises with a
            mixture of the two. Default: False.
        loss_name (str): Default: 'loss_distill'.
    """

    def __init__(self,
                 teacher_checkpoint: Optional[str] = None,
                 teacher: str = 'checkpoint',
                 temperature: float = 1.0,
                 loss_weight: float = 1.0,
                 feature_weight: float = 0.0,
                 student_task_loss: bool = True,
                 shared_grad_scale: float = 1.0,
                 dense_running_stats: bool = False,
                 loss_name: str = 'loss_distill') -> None:
        super().__init__()
        for name, value, low in (('temperature', temperature, 0.0),
                                 ('loss_weight', loss_weight, None),
                                 ('feature_weight', feature_weight, None)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (low is not None and value <= low) or value < 0:
                raise ValueError(f'DenseDistillLoss: {name} must be a number '
                                 f'{"> 0" if low is not None else ">= 0"}, got {value!r}')
        if teacher_checkpoint is not None and not isinstance(teacher_checkpoint, str):
            raise ValueError('DenseDistillLoss: teacher_checkpoint must be a path (str) or None, '
                             f'got {teacher_checkpoint!r}')
        if teacher not in ('checkpoint', 'self'):
            raise ValueError(f"DenseDistillLoss: teacher must be 'checkpoint' or 'self', got "
                             f'{teacher!r}')
        if teacher == 'self' and teacher_checkpoint is not None:
            raise ValueError("DenseDistillLoss: teacher='self' takes no teacher_checkpoint (the "
                             'model teaches itself)')
        self.student_task_loss = check_bool('DenseDistillLoss', 'student_task_loss',
                                            student_task_loss)
        if not student_task_loss and teacher != 'self':
            raise ValueError("DenseDistillLoss: student_task_loss=False needs teacher='self' "
                             '(its dense pass is what gives the decode and auxiliary heads a '
                             f'task loss; with teacher={teacher!r} nothing would)')
        if isinstance(shared_grad_scale, bool) or not isinstance(shared_grad_scale, (int, float)) \
                or not 0.0 <= shared_grad_scale <= 1.0:
            raise ValueError('DenseDistillLoss: shared_grad_scale must be a number in [0, 1], '
                             f'got {shared_grad_scale!r}')
        if shared_grad_scale != 1.0 and teacher != 'self':
            raise ValueError("DenseDistillLoss: shared_grad_scale needs teacher='self' (with a "
                             'frozen teacher only the mixed-scale pass trains the shared weights; '
                             f'scaling its gradient would only scale the learning rate), got '
                             f'teacher={teacher!r}; with a frozen teacher set '
                             'shared_grad_scale=1.0 and dense_running_stats=False (--cfg-options '
                             'model.distill.shared_grad_scale=1.0 '
                             'model.distill.dense_running_stats=False)')
        self.shared_grad_scale = float(shared_grad_scale)
        self.dense_running_stats = check_bool('DenseDistillLoss', 'dense_running_stats',
                                              dense_running_stats)
        if dense_running_stats and teacher != 'self':
            raise ValueError("DenseDistillLoss: dense_running_stats needs teacher='self' (with a "
                             'frozen teacher there is no dense pass to record them); with a '
                             'frozen teacher set dense_running_stats=False (--cfg-options '
                             'model.distill.dense_running_stats=False)')
        self.teacher = teacher
        if not loss_weight and not feature_weight:
            raise ValueError('DenseDistillLoss: loss_weight and feature_weight are both 0: '
                             'nothing to distil (set model.distill=None instead)')
        self.teacher_checkpoint = teacher_checkpoint
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)
        self.feature_weight = float(feature_weight)
        self.loss_name = loss_name
        # the frozen teacher: held outside the module tree (see _apply); None until built
        self.__dict__['teacher_model'] = None
        #: sha256 of the teacher's file: SafeCheckpointHook records it in every checkpoint and
        #: refuses a resume whose teacher file changed
        self.teacher_sha256: Optional[str] = None

    @property
    def one_stage_options(self) -> Optional[dict]:
        """With ``teacher='self'``: the options that decide how the mixed-scale pass shares the
        model with the dense pass (``SafeCheckpointHook`` records them and refuses a resume under
        others); None with a frozen teacher."""
        if self.teacher != 'self':
            return None
        return dict(student_task_loss=self.student_task_loss,
                    shared_grad_scale=self.shared_grad_scale,
                    dense_running_stats=self.dense_running_stats)

    def build_teacher(self, student: nn.Module, checkpoint: Optional[str] = None) -> nn.Module:
        """Build :attr:`teacher_model`: ``student``'s backbone, neck and decode head in their
        dense form (``dense_copy()`` where the module has one: the parts only coarse tokens use
        left out) loaded from ``checkpoint`` (default ``teacher_checkpoint``), frozen."""
        from ..checkpoints import file_sha256, load_model_weights
        checkpoint = self.teacher_checkpoint if checkpoint is None else checkpoint
        if not checkpoint:
            raise ValueError('MSViTEncoderDecoder: distill needs the dense teacher\'s checkpoint: '
                             'set model.distill.teacher_checkpoint, or load_from at the start of '
                             'the run (tools/train.py then uses that file; a --resume without '
                             'load_from finds it in the last checkpoint)')
        teacher = nn.Module()
        for name in ('backbone', 'neck', 'decode_head'):
            part = getattr(student, name)
            setattr(teacher, name, part.dense_copy() if hasattr(part, 'dense_copy') else
                    copy.deepcopy(part))
        load_model_weights(teacher, checkpoint)
        teacher.requires_grad_(False)
        self.__dict__['teacher_model'] = teacher.eval()
        self.teacher_sha256 = file_sha256(checkpoint)
        return teacher

    @torch.no_grad()
    def teacher_outputs(self, inputs: torch.Tensor, with_maps: bool = False):
        """The teacher's decode logits (and its taps as dense maps) for ``inputs``, every region
        fine."""
        from ..policy import ScalePolicy
        teacher = self.teacher_model
        if teacher is None:
            raise RuntimeError('MSViTEncoderDecoder: distill is set but the teacher was not '
                               'built; call init_weights() first (the runner does)')
        maps, x = teacher.neck.maps_and_outputs(
            teacher.backbone(inputs, ScalePolicy.forced('fine')))
        return teacher.decode_head.forward(x), (maps if with_maps else None)

    def _apply(self, fn, *args, **kwargs):
        # the teacher is no submodule (no parameters, no checkpoint entries) yet moves with the
        # model: every .to() / .cuda() / .half() reaches it here
        super()._apply(fn, *args, **kwargs)
        if self.teacher_model is not None:
            self.teacher_model._apply(fn, *args, **kwargs)
        return self

    def logit_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) per pixel of (B, K, H, W) logits, mean over pixels, x T^2."""
        if student.shape != teacher.shape:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode='bilinear',
                                    align_corners=False)
        t = self.temperature
        log_student = F.log_softmax(student.float() / t, dim=1)
        log_teacher = F.log_softmax(teacher.float() / t, dim=1)
        kl = F.kl_div(log_student, log_teacher, reduction='none', log_target=True).sum(1)
        return kl.mean() * t * t

    @staticmethod
    def feature_loss(student: Sequence[torch.Tensor],
                     teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean over taps of ||s - t||^2 / ||t||^2 (per-element means) of dense maps."""
        terms = [(s.float() - t.float()).pow(2).mean() / t.float().pow(2).mean().clamp_min(1e-6)
                 for s, t in zip(student, teacher)]
        return torch.stack(terms).mean()

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                student_maps: Optional[Sequence[torch.Tensor]] = None,
                teacher_maps: Optional[Sequence[torch.Tensor]] = None
                ) -> Dict[str, torch.Tensor]:
        losses = {}
        if self.loss_weight:
            losses[self.loss_name] = self.loss_weight * self.logit_loss(student_logits,
                                                                        teacher_logits)
        if self.feature_weight and student_maps is not None:
            losses[self.loss_name + '_feat'] = self.feature_weight * self.feature_loss(
                student_maps, teacher_maps)
        return losses
