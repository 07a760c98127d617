"""Runtime hooks that make training safe to interrupt and to resume (in ``default_runtime``).

* :class:`SafeCheckpointHook` - mmengine's ``CheckpointHook`` whose checkpoints are written
  atomically, whose old checkpoint is deleted only once the new one is on disk (mmengine deletes
  it first, so a kill during the save with ``max_keep_ckpts=1`` left nothing), which writes
  ``last_checkpoint`` atomically and cleans the temporaries an interrupted save left; it refuses
  a ``load_from`` or distillation teacher that its own checkpoints would replace, records the
  teacher file's sha256 in every checkpoint and refuses a resume whose teacher file changed.
* :class:`ExactResumeHook` - saves the random-number state (torch, CUDA, numpy, Python) with
  every checkpoint and restores it on ``--resume`` at the point where the uninterrupted run
  would be, so a resumed run repeats the uninterrupted run's losses (single process,
  ``num_workers=0``).
* :class:`CheckpointCheckHook` - refuses a ``load_from`` checkpoint that does not cover the
  model (a gate file, a classification model, a backbone only) or, evaluated or resumed, has
  weights the model lacks. (Config text that mmengine would execute is removed by the loaders
  themselves: :mod:`mmseg_msvit.compat.checkpoint_loading`.)
* :class:`CustomKeysCheckHook` - refuses an optimizer ``custom_keys`` entry that names a part by
  an older name (``backbone.coarse_embed``, now ``backbone.patch_embed.coarse_embed``): it would
  match no parameter, and mmengine would drop it, learning-rate or decay setting and all,
  without a word.
* :class:`FiniteLossHook` - stops training at the first non-finite loss, naming the iteration
  and the loss terms.
* :class:`TrainingTimeHook` - the training's wall time summed over every resumed part, in each
  checkpoint's ``meta['train_seconds']``.
"""
import os.path as osp
import random
import time
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .fileio import atomic_write_bytes, remove_stale_temporaries

#: the hooks ``tools/train.py``/``tools/test.py`` make sure of, whatever the config says
RUNTIME_HOOKS = ('ExactResumeHook', 'CheckpointCheckHook', 'CustomKeysCheckHook',
                 'FiniteLossHook', 'TrainingTimeHook')


def check_custom_keys(custom_keys, parameter_names) -> None:
    """Check an optimizer's ``paramwise_cfg.custom_keys`` against the model's parameter names
    (mmengine applies a key to every parameter whose full name contains it, and drops a key
    that matches none without a word): a key that matches no parameter because it names a part
    by a name checkpoints are still read under (an older or another library's name:
    :func:`~mmseg_msvit.models.checkpoints.loaded_key`, the one table of renames) is refused
    with the name the part has. Other keys that match nothing are left alone: shared schedules
    name parts some models lack (the dense models have no ``gate_loss``)."""
    from ..models.checkpoints import loaded_key
    names = list(parameter_names)
    for key in custom_keys:
        if any(key in name for name in names):
            continue
        # the key as a whole name or as a prefix (``backbone.coarse_embed`` -> ``...*``)
        renamed = {loaded_key(key), loaded_key(key + '.').rstrip('.')} - {key}
        if renamed:
            raise ValueError(
                f'optim_wrapper.paramwise_cfg.custom_keys: {key!r} matches no parameter: the '
                f'part is named {renamed.pop()!r}; rename the key (mmengine would drop its '
                'settings without a word)')


def _model(runner):
    """The runner's model without its distributed wrapper."""
    return runner.model.module if hasattr(runner.model, 'module') else runner.model


def _teacher_digest(runner) -> Optional[str]:
    """sha256 of the distillation teacher's file the model built (None without one)."""
    model = _model(runner)
    return getattr(model, 'distill_teacher_sha256', None)


def _one_stage_options(runner) -> Optional[dict]:
    """The model's :attr:`~mmseg_msvit.models.losses.DenseDistillLoss.one_stage_options`, or
    None without in-place distillation."""
    distill = getattr(_model(runner), 'distill', None)
    return getattr(distill, 'one_stage_options', None)


def _content_gate_score(runner) -> Optional[dict]:
    """The model's content gate's :attr:`~mmseg_msvit.models.ContentGate.score_options`, or
    None when its gate is not a content gate."""
    from ..models.gates import ContentGate
    gate = getattr(getattr(_model(runner), 'backbone', None), 'gate', None)
    return gate.score_options if isinstance(gate, ContentGate) else None


def _refuse_other_options(recorded: Optional[dict], current: Optional[dict], started: str,
                          none: str, otherwise: str, prefix: str, extra: str = '') -> None:
    """On resume: refuse a config whose options differ from those the checkpoint recorded
    (``recorded``; None: nothing recorded, nothing checked), naming the overrides that resume
    the run as it started."""
    if recorded is None or recorded == current:
        return
    options = ' '.join(f'{prefix}{k}={v}' for k, v in recorded.items())
    raise ValueError(
        f'this run started with {started} {recorded}, but the config resuming it has '
        f'{current if current is not None else none}: a resumed run would train {otherwise} '
        f'midway. Resume with the configuration it started with (--cfg-options {extra}'
        f'{options}), or start a new run.')


#: what ``SafeCheckpointHook`` records in every checkpoint's meta besides the weights (what no
#: state dict tells): meta key -> its reader (None: nothing to record)
_RECORDS = {'msvit_teacher_sha256': _teacher_digest,
            'msvit_content_gate': _content_gate_score,
            'msvit_one_stage': _one_stage_options}


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """``CheckpointHook`` that never loses a checkpoint (arguments as mmengine's).

    Differences: checkpoints go through the ``'atomic_local'`` file backend unless
    ``backend_args`` names another; the new checkpoint and ``last_checkpoint`` are written
    before the oldest kept checkpoint is removed; before training, ``.*.tmp`` files and outdated
    checkpoints left by an interrupted save are removed. ``save_best`` keeps mmengine's own
    order (the previous best is replaced by the new one).
    """

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs) -> None:
        if backend_args is None and kwargs.get('file_client_args') is None:
            backend_args = dict(backend='atomic_local')
        super().__init__(*args, backend_args=backend_args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._check_sources_survive(runner)
        if not (is_main_process() and osp.isdir(self.out_dir)):
            return
        stale = remove_stale_temporaries(self.out_dir)
        for step in runner.message_hub.runtime_info.get('outdated_ckpt_ids', []):
            if step in self.keep_ckpt_ids:
                continue
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
            if self.file_backend.isfile(path):  # kept by a kill between save and deletion
                self.file_backend.remove(path)
                stale.append(path)
        for path in stale:
            print_log(f'SafeCheckpointHook: removed {path}, left by an interrupted save',
                      logger='current')

    def _check_sources_survive(self, runner) -> None:
        """Refuse to start when a file the run reads (``load_from`` at its start, the
        distillation teacher whenever it is built) lies in this hook's output folder under a
        name the run's own checkpoints take (``iter_N.pth``, ``epoch_N.pth``, ``best_*.pth``):
        the run would overwrite it with its own weights, or delete it under ``max_keep_ckpts``,
        and a later ``--resume`` would distil from it or find it gone."""
        import re
        pattern = re.compile(r'(iter|epoch)_\d+\.pth|best_.*\.pth')
        model = _model(runner)
        sources = []
        if runner._load_from and not runner._resume:
            sources.append(('load_from', runner._load_from))
        distill = getattr(model, 'distill', None)
        teacher = getattr(distill, 'teacher_checkpoint', None)
        if teacher and getattr(distill, 'teacher', 'checkpoint') == 'checkpoint':
            sources.append(('the distillation teacher (model.distill.teacher_checkpoint)',
                            teacher))
        out_dir = osp.realpath(str(self.out_dir))
        for what, path in sources:
            path = str(path)
            if osp.dirname(osp.realpath(path)) == out_dir and \
                    pattern.fullmatch(osp.basename(path)):
                raise ValueError(
                    f'{what} {path!r} is in this run\'s checkpoint folder {self.out_dir!r} under a '
                    'name its own checkpoints take: the run would overwrite it or delete it '
                    f'(max_keep_ckpts={self.max_keep_ckpts}), and a --resume would then '
                    'distil from another file or find none. Copy it out of the folder (e.g. '
                    f'work_dirs/teacher.pth) and point to the copy, or use another --work-dir.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Record the distillation teacher's file digest, the content gate's score options (not
        in the state dict: it has no parameters) and the in-place distillation's options with
        every checkpoint."""
        for key, read in _RECORDS.items():
            value = read(runner)
            if value is not None:
                checkpoint.setdefault('meta', {})[key] = value

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """On ``--resume``, refuse a teacher whose file changed since the checkpoint was
        written, a content gate that scores regions differently, or in-place distillation under
        other options: the resumed run would distil from another model, train on other
        decisions, or train otherwise, without a word."""
        if not runner._resume:
            return
        meta = checkpoint.get('meta') or {}
        _refuse_other_options(meta.get('msvit_content_gate'), _content_gate_score(runner),
                              'a content gate scoring', 'no content gate', 'on other decisions',
                              'model.backbone.gate.')
        _refuse_other_options(meta.get('msvit_one_stage'), _one_stage_options(runner),
                              'in-place distillation under', 'no in-place distillation',
                              'otherwise', 'model.distill.', 'model.distill.teacher=self ')
        recorded = meta.get('msvit_teacher_sha256')
        if recorded is None:
            return
        digest = _teacher_digest(runner)
        if digest is None:  # the run started with a frozen teacher; this config has none
            raise ValueError(
                'this run started with a frozen distillation teacher (its checkpoints record the '
                "teacher file's sha256), but the config resuming it has none (distill.teacher="
                "'self', or no distill): a resumed run would switch recipes midway. Resume with "
                'the configuration it started with (for the UPerNet step-2 configs: '
                '--cfg-options model.distill.teacher=checkpoint '
                'model.distill.shared_grad_scale=1.0 model.distill.dense_running_stats=False, '
                'with the content gate it started with), or start a new run.')
        if digest != recorded:
            model = _model(runner)
            raise ValueError(
                f'the distillation teacher {model.distill.teacher_checkpoint!r} is not the file '
                f'this run started with (sha256 {digest[:12]}..., the checkpoint recorded '
                f'{recorded[:12]}...): a resumed run would distil from another model. Restore '
                'the original file, or start a new run (another --work-dir).')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            # keep_ckpt_ids is a deque bounded by max_keep_ckpts: make room explicitly
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        # saved with the new checkpoint: a kill between its save and the deletion below leaves
        # the old files named here, and the next training removes them (before_train)
        runner.message_hub.update_info('outdated_ckpt_ids', list(outdated))
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write_bytes(osp.join(runner.work_dir, 'last_checkpoint'),
                           str(self.last_ckpt).encode())
        for old_step in outdated:  # only now that the new checkpoint is durable
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)


def get_random_state() -> dict:
    """The state of every random-number generator training draws from."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                 python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    """Restore what :func:`get_random_state` returned (checkpoint round trip included: numpy's
    state comes back as a list, Python's as nested lists)."""
    torch.set_rng_state(state['torch'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss),
                         float(cached)))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'][:torch.cuda.device_count()])


class _RestoreAfterSkip:
    """Wraps the train loop's data iterator: mmengine re-reads ``skip`` batches after a resume
    (data augmentation draws random numbers while it does); the saved state is restored once
    they are read, just before the first new batch, where the uninterrupted run stood."""

    def __init__(self, iterator, skip: int, state: dict) -> None:
        self.iterator, self.skip, self.state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0 and self.state is not None:
            set_random_state(self.state)
            self.state = None
        self.skip -= 1
        return next(self.iterator)

    def __getattr__(self, name):
        return getattr(self.iterator, name)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Save the random-number state with each checkpoint; restore it on resume.

    Exact for single-process runs with ``num_workers=0`` (dataloader workers seed themselves
    from the state, so they follow too, but their timing is not reproducible). Under
    distributed training every rank restores the state rank 0 saved.
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = get_random_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('random_state')
        meta = checkpoint.get('meta') or {}
        self._pending = None if state is None else (int(meta.get('iter', 0)), state)

    def before_val(self, runner) -> None:
        # a validation inside training draws random numbers (a dataloader's base seed); keep
        # them out of the training stream so a resumed run, which did not validate at the
        # checkpoint's iteration, sees the same numbers as the uninterrupted one
        self._before_val = get_random_state()

    def after_val(self, runner) -> None:
        state, self._before_val = getattr(self, '_before_val', None), None
        if state is not None:
            set_random_state(state)

    def before_train(self, runner) -> None:
        if self._pending is None:
            return
        saved_iter, state = self._pending
        self._pending = None
        loop = runner.train_loop
        if saved_iter == 0 or runner.iter != saved_iter:
            return  # loaded weights (load_from), not a resume: keep the configured seed
        if hasattr(loop, 'dataloader_iterator'):  # iteration-based: batches are re-read first
            loop.dataloader_iterator = _RestoreAfterSkip(loop.dataloader_iterator, runner.iter,
                                                         state)
        else:  # epoch-based: checkpoints are written at epoch ends, nothing is re-read
            set_random_state(state)


def check_optimizer_layout(checkpoint: dict, path: str) -> None:
    """Refuse to resume the optimizer of a checkpoint written when the coarse-token extras were
    ``backbone.coarse_embed.*`` (they are ``backbone.patch_embed.coarse_embed.*`` now): mmengine
    matches optimizer state to parameters by position, and the extras' position changed, so
    moments, learning rates and decay would land on other parameters. The weights themselves
    load under the new names (``load_from``)."""
    from ..models.checkpoints import CheckpointError, state_dict_of
    if any(key.startswith('backbone.coarse_embed.') for key in state_dict_of(checkpoint)):
        raise CheckpointError(
            f'--resume {path}: this checkpoint was written when the coarse-token extras were '
            'backbone.coarse_embed.* (now backbone.patch_embed.coarse_embed.*); its optimizer '
            'state is ordered for that layout and would be applied to other parameters. Start '
            f'a new run from its weights instead (load_from={path!r}, no --resume), or resume '
            'with the version that wrote it')


@HOOKS.register_module()
class CheckpointCheckHook(Hook):
    """Guards every checkpoint the runner loads.

    * A checkpoint given as ``load_from`` (tools/test.py, or the start of a training run) that
      lacks weights the model needs is refused, naming what is missing and what the file looks
      like. A resume is checked the same way. Only the start of a training run may lack gate
      weights (a dense model, another gate type), coarse-token embedding or neck unpooling
      weights: they then train from their initialisation, and the log says so.
    """
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        """A one-stage step 2 (``distill.teacher='self'``) fine-tunes step 1's dense model:
        refused when the run loaded no weights (no ``load_from``, a ``--resume`` that found no
        checkpoint, no pretrained backbone), which would train it from random weights."""
        model = _model(runner)
        if getattr(getattr(model, 'distill', None), 'teacher', None) != 'self' or \
                runner._has_loaded:
            return
        init = getattr(getattr(model, 'backbone', None), 'init_cfg', None)
        if any(isinstance(c, dict) and c.get('checkpoint')
               for c in (init if isinstance(init, list) else [init])):
            return
        raise ValueError('model.distill: the one-stage recipe (teacher=\'self\') fine-tunes the '
                         'dense model of step 1, and this run loaded no weights: set '
                         'load_from=<its checkpoint> (or a pretrained model.backbone.init_cfg), '
                         'or --resume a run that has a checkpoint')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.runner import BaseLoop

        from ..models.checkpoints import (FRESH_AT_TRAINING_START, check_covers,
                                          check_no_foreign_weights, key_groups, loaded_key,
                                          required_keys, state_dict_of)
        model = _model(runner)
        path = runner._load_from or runner.message_hub.get_info('last_ckpt') or 'checkpoint'
        backbone = getattr(model, 'backbone', None)
        if runner._resume and checkpoint.get('optimizer') is not None:
            check_optimizer_layout(checkpoint, path)
        # only the start of a training run (not a resume, not an evaluation) takes a gate from
        # gate_init or starts new parts from their initialisation
        training_start = isinstance(runner._train_loop, BaseLoop) and not runner._resume
        if getattr(backbone, 'gate_init', None) is not None and training_start:
            # load_from runs after init_weights: keep the gate that gate_init loaded
            state = checkpoint.get('state_dict', checkpoint)
            dropped = [key for key in list(state) if key.startswith(('backbone.gate.',
                                                                     'module.backbone.gate.'))]
            for key in dropped:
                state.pop(key)
            if dropped:
                print_log(f'CheckpointCheckHook: {path} loaded without its gate: '
                          'model.backbone.gate_init provides the gate', logger='current')
        if training_start:
            # the start of a training run may bring a new gate (a dense model, or another gate
            # type), a coarse-token embedding or the neck's unpooling: they then train from
            # their initialisation (the latter two start at zero); everything else must fit
            state = {loaded_key(k) for k in state_dict_of(checkpoint)}
            missing = [k for k in required_keys(model) if k not in state]
            if missing and all(k.startswith(FRESH_AT_TRAINING_START) for k in missing):
                print_log(f'CheckpointCheckHook: {path} has no weights for '
                          f'{len(missing)} parameters ({", ".join(key_groups(missing))}); they '
                          'start from their initialisation', logger='current')
                return
        check_covers(model, checkpoint, str(path))
        if not training_start:  # an evaluation or a resume: exactly the model that was trained
            check_no_foreign_weights(model, checkpoint, str(path))


@HOOKS.register_module()
class CustomKeysCheckHook(Hook):
    """Before training, checks the optimizer's ``paramwise_cfg.custom_keys`` against the model's
    parameters (:func:`check_custom_keys`)."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        optim = runner.cfg.get('optim_wrapper') or {}
        keys = (optim.get('paramwise_cfg') or {}).get('custom_keys') or {}
        if keys:
            model = _model(runner)
            check_custom_keys(keys, (name for name, _ in model.named_parameters()))


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop training at the first iteration whose loss is NaN or infinite.

    Raises a ``FloatingPointError`` naming the iteration and the non-finite loss terms (a NaN
    in one image turns every later loss into NaN without a word otherwise). Costs one host
    read of the total loss per iteration, which logging makes anyway.
    """
    priority = 'HIGH'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not outputs or 'loss' not in outputs:
            return
        if bool(torch.isfinite(outputs['loss']).all()):
            return
        bad = [name for name, value in outputs.items()
               if torch.is_tensor(value) and not bool(torch.isfinite(value).all())]
        raise FloatingPointError(
            f'training stopped at iteration {runner.iter + 1}: non-finite loss '
            f"({', '.join(bad)}); check the inputs of this batch (a NaN/Inf pixel?) and the "
            'learning rate. The last checkpoint before it is intact.')


@HOOKS.register_module()
class TrainingTimeHook(Hook):
    """Training wall time summed over every part of a resumed run.

    Each checkpoint's ``meta['train_seconds']`` holds the time trained up to it: the resumed
    checkpoint's figure plus the time since this process started training (a ``load_from``
    start, which is a new run, starts from zero). Work done after the last checkpoint of a
    killed run is not in it; its repetition after the resume is. The total is also in the
    message hub's info ``train_seconds`` at the end.
    """
    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.resumed_seconds = 0.0
        self.started = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
        seconds = meta.get('train_seconds', 0.0) if isinstance(meta, dict) else 0.0
        self.resumed_seconds = float(seconds) if runner._resume else 0.0

    def before_train(self, runner) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Training time so far (resumed parts included)."""
        since = 0.0 if self.started is None else time.perf_counter() - self.started
        return self.resumed_seconds + since

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['train_seconds'] = self.seconds()

    def after_train(self, runner) -> None:
        runner.message_hub.update_info('train_seconds', self.seconds())
