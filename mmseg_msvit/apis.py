"""Plumbing shared by the command-line tools (config loading, evaluation models)."""
import os.path as osp
from typing import Optional, Sequence, Tuple

from mmengine.config import Config


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config (clear error when missing) and merge ``--cfg-options``."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def resolve_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """mmseg's rule: the CLI's --work-dir, else the config's, else work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def build_eval_model(cfg: Config, checkpoint: Optional[str] = None,
                     loader_names: Sequence[str] = ('val_dataloader', )) -> Tuple:
    """An eval-mode segmentor from ``cfg`` (weights from ``checkpoint``, no pretrained file) and
    the first of ``loader_names`` as a single-process, batch-1 dataloader.

    Returns:
        tuple: (model, dataloader)
    """
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner, load_checkpoint
    from mmseg.registry import MODELS
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu')
    model.eval()
    loader_cfg = cfg[loader_names[0]]
    loader_cfg.batch_size = 1
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    return model, Runner.build_dataloader(loader_cfg)
