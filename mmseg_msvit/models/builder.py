"""Build our sub-components from mmseg's registry whatever the current default scope is.

Under another scope (mmpretrain's when MSViT sits in a classifier, mmengine's after a bare Runner)
``MODELS.build`` would look the type up in that scope's registry, which does not hold our
components.
"""
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS


def build_component(cfg: dict):
    """``mmseg.registry.MODELS.build(cfg)`` under the mmseg scope."""
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(cfg)
