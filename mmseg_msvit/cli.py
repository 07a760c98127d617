"""Command-line plumbing shared by the tools in tools/ (config loading, runtime safety, evaluation
models, one-line errors). Not an inference API: for that use mmseg.apis (init_model,
inference_model), which works with our configs."""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Optional, Sequence, Tuple

from mmengine.config import Config


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config (clear errors for a missing, broken or non-config file) and merge
    ``--cfg-options``. ``'mmseg::vit/...py'`` names a config installed with mmseg."""
    if not str(path).endswith(('.py', '.json', '.yml', '.yaml')):
        raise ValueError(f'config file {path!r} is not a config (.py, .json, .yml or .yaml); '
                         'were the config and the checkpoint given in the wrong order?')
    if '::' not in str(path) and not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    try:
        if '::' in str(path):  # a config installed with a package: mmengine's hub resolves it
            from mmengine.hub import get_config
            cfg = get_config(path)
        else:
            cfg = Config.fromfile(path)
    except SyntaxError as err:
        where = f'{err.filename}, line {err.lineno}' if err.lineno else str(err.filename)
        raise ValueError(f'config {path!r} has a syntax error ({where}): {err.msg}') from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def resolve_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """mmseg's rule: the CLI's --work-dir, else the config's, else work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def _image_folders(dataset: dict):
    """(dataset type, image folder) of a dataset config and of the datasets it wraps."""
    for key in ('dataset', 'datasets'):
        inner = dataset.get(key)
        for child in (inner if isinstance(inner, (list, tuple)) else [inner] if inner else []):
            yield from _image_folders(child)
    if 'dataset' in dataset or 'datasets' in dataset:
        return
    prefix = dataset.get('data_prefix', '')
    prefix = prefix.get('img_path', prefix.get('img', '')) if isinstance(prefix, dict) else prefix
    yield dataset.get('type'), osp.join(dataset.get('data_root') or '', prefix or '')


def check_data_folders(cfg: Config, loaders: Sequence[str]) -> None:
    """Refuse a dataloader whose image folder is missing or holds no image, naming the loader
    and the folder (mmengine's own message for an empty split is ``need at least one array to
    concatenate``)."""
    for name in loaders:
        loader = cfg.get(name)
        if not loader or not isinstance(loader.get('dataset'), dict):
            continue
        for dataset_type, folder in _image_folders(loader['dataset']):
            if not folder:
                continue
            if not osp.isdir(folder):
                raise FileNotFoundError(f'{name}: image folder {folder!r} of {dataset_type} does '
                                        'not exist (data_root + data_prefix); fix data_root or '
                                        'create the dataset')
            has_image = any(f.lower().endswith(IMAGE_SUFFIXES)
                            for _, _, files in os.walk(folder) for f in files)
            if not has_image:
                raise FileNotFoundError(f'{name}: no image file under {folder!r} '
                                        f'({dataset_type}); the split is empty')


def ensure_runtime_hooks(cfg: Config) -> None:
    """Make sure a run has the safety hooks of :mod:`mmseg_msvit.engine`, whatever the config
    (a config's own ``custom_hooks`` list replaces the base one): checkpoints never lost
    (``CheckpointHook`` becomes its subclass ``SafeCheckpointHook``), exact resume, checkpoint
    checks, a stop at the first non-finite loss."""
    from mmseg_msvit.engine import RUNTIME_HOOKS
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if checkpoint is not None and checkpoint.get('type') in ('CheckpointHook', None):
        checkpoint['type'] = 'SafeCheckpointHook'
    hooks = list(cfg.get('custom_hooks') or [])
    present = {hook.get('type') for hook in hooks if isinstance(hook, dict)}
    hooks += [dict(type=name) for name in RUNTIME_HOOKS if name not in present]
    cfg.custom_hooks = hooks


def fill_distill_teacher(cfg: Config) -> None:
    """A model distilled from its dense teacher (``model.distill``) without a
    ``teacher_checkpoint`` takes ``load_from``, the dense model the fine-tuning starts from; a
    ``--resume`` without ``load_from`` takes the teacher its run started with (read from the
    config stored in the work dir's last checkpoint). A one-stage run (``teacher='self'``) has no
    teacher file (``CheckpointCheckHook`` checks that it starts from a checkpoint). Call after
    ``resolve_work_dir``."""
    distill = cfg.model.get('distill')
    if not distill or distill.get('teacher', 'checkpoint') != 'checkpoint' or \
            distill.get('teacher_checkpoint'):
        return
    if cfg.get('load_from'):
        distill['teacher_checkpoint'] = cfg.load_from
    elif cfg.get('resume') and cfg.get('work_dir'):
        # a resumed run: the teacher its start used, from the config stored in the last
        # checkpoint (parsed, never run)
        from mmengine.runner.checkpoint import find_latest_checkpoint

        from .models.checkpoints import literal_from_cfg_text, read_checkpoint
        last = find_latest_checkpoint(cfg.work_dir)
        if last:
            meta = read_checkpoint(last, 'last checkpoint').get('meta') or {}
            teacher = literal_from_cfg_text(meta.get('cfg'), 'teacher_checkpoint')
            if isinstance(teacher, str) and teacher:
                distill['teacher_checkpoint'] = teacher


def _replace_sync_bn(node) -> int:
    """Turn every ``norm_cfg`` of type SyncBN in a config tree into BN; returns how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def setup_cpu_distributed(cfg: Config) -> bool:
    """Let ``--launcher pytorch`` run on CPUs (gloo) where no GPU is visible.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` before it creates the process group, so a
    distributed run without GPUs fails there. When ``cfg.launcher == 'pytorch'`` and CUDA is not
    available, this creates the gloo process group from torchrun's environment first (mmengine
    then keeps it), wraps the model in DistributedDataParallel without device ids, and turns
    SyncBN into BN (SyncBN needs GPUs). Returns True when it did so.
    """
    import torch
    import torch.distributed as dist
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        if name not in os.environ:
            raise RuntimeError(f'--launcher pytorch needs {name} in the environment; start the '
                               'run with tools/dist_train.sh (torchrun)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    replaced = _replace_sync_bn(cfg.model)
    if dist.get_rank() == 0:
        print(f'[dist] no GPU: {dist.get_world_size()} CPU processes over gloo'
              + (f'; {replaced} SyncBN layer configs use BN' if replaced else ''), flush=True)
    return True


def build_eval_model(cfg: Config, checkpoint: Optional[str] = None,
                     loader_names: Sequence[str] = ('val_dataloader', )) -> Tuple:
    """An eval-mode segmentor from ``cfg`` (weights from ``checkpoint``, no pretrained file) and
    the first of ``loader_names`` as a single-process, batch-1 dataloader (None when
    ``loader_names`` is empty: no dataset needed).

    The checkpoint must cover the model (:func:`mmseg_msvit.models.checkpoints.check_covers`):
    a gate file, a classification model or a backbone alone is refused, never evaluated with
    random weights.

    Returns:
        tuple: (model, dataloader)
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.registry import MODELS

    from mmseg_msvit.models.checkpoints import load_model_weights
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_model_weights(model, checkpoint)
    model.eval()
    if not loader_names:
        return model, None
    loader_cfg = cfg[loader_names[0]]
    loader_cfg.batch_size = 1
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    return model, Runner.build_dataloader(loader_cfg)


def tool_parser(doc: str) -> argparse.ArgumentParser:
    """The argument parser of a tool: its description is the first paragraph of the tool's
    docstring ``doc``, and every option's help shows its default."""
    return argparse.ArgumentParser(description=doc.split('\n\n')[0].replace('\n', ' '),
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def check_output_path(tool: str, source: str, out: str, force: bool = False,
                      example: str = 'out.pth') -> None:
    """A tool's output file: never a folder, never its source checkpoint, never anything but a
    regular file (a device, a pipe, a socket), and an existing file only with ``--force`` (clear
    one-line errors naming ``tool``)."""
    if osp.isdir(out):
        raise IsADirectoryError(f'{tool}: output {out!r} is a directory; give a file name, e.g. '
                                f'{osp.join(out, example)}')
    if osp.lexists(out) and not osp.isfile(out):
        raise FileExistsError(f'{tool}: output {out!r} exists and is not a regular file (a '
                              'device, pipe, socket or broken link); it is never replaced, '
                              'choose another output file')
    same = osp.abspath(source) == osp.abspath(out) or (
        osp.exists(source) and osp.exists(out) and osp.samefile(source, out))
    if same:
        raise FileExistsError(f'{tool}: output {out!r} is the source checkpoint; it is never '
                              'overwritten, choose another output file')
    if osp.exists(out) and not force:
        raise FileExistsError(f'{tool}: output {out!r} exists; pass --force to replace it')


def int_at_least(minimum: int, unit: str = ''):
    """An argparse type: an int >= ``minimum`` (clear message otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an int') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}{unit}, got {value}')
        return value

    return parse


def number_in(low: float, high: float, low_open: bool = False):
    """An argparse type: a number in [low, high] (or (low, high] with ``low_open``); NaN
    refused."""
    interval = f'{"(" if low_open else "["}{low:g}, {high:g}]'

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a number in {interval}') from None
        inside = (low < value if low_open else low <= value) and value <= high
        if not inside:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f'{text} is not in {interval}')
        return value

    return parse


#: errors that mean "the input was wrong": shown as one line, no traceback
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
               KeyError, FloatingPointError)


def run_cli(main: Callable, argv: Optional[Sequence[str]] = None):
    """Run a tool's ``main`` and turn a wrong input into a one-line error and exit code 1.

    Set ``MMSEG_MSVIT_TRACEBACK=1`` to see the full traceback instead.
    """
    if os.environ.get('MMSEG_MSVIT_TRACEBACK'):
        return main(argv)
    try:
        return main(argv)
    except USER_ERRORS as err:
        tool = osp.basename(sys.argv[0]) or 'mmseg_msvit'
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f'{tool}: error: {message}', file=sys.stderr)
        sys.exit(1)
