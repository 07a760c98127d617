"""Every weight file the project reads or writes, read as data, in one package:

* :mod:`.reading` - opening a file safely (:func:`read_checkpoint`, never code), what a file is
  (:func:`describe_checkpoint`), coverage checks (:func:`check_covers`,
  :func:`load_model_weights`) and the config text stored in a checkpoint (parsed, never run);
* :mod:`.keys` - ViT key formats (timm/DeiT, mmseg, mmpretrain; :func:`to_timm_vit`) and
  :func:`load_pretrained` into an MSViT;
* :mod:`.gate_files` - the gate files of ``tools/transfer_gate.py`` (:func:`extract_gate`,
  :func:`save_gate`, :func:`load_gate`).

Dependencies run one way: ``keys`` and ``gate_files`` import ``reading``, never each other.
"""
from .gate_files import (GATE_PREFIX, PRIOR_PREFIX, check_gate_compatible,
                         check_gate_normalisation, extract_gate, gate_from_file,
                         input_normalisation, load_gate,
                         read_gate_meta, save_gate)
from .keys import checkpoint_to_timm_vit, load_pretrained, to_timm_vit, vit_depth, vit_format
from .reading import (EVAL_OPTIONAL_PREFIXES, FRESH_AT_TRAINING_START, CheckpointError,
                      check_covers, check_no_foreign_weights, config_text_problem,
                      describe_checkpoint, file_sha256, foreign_weights,
                      literal_from_cfg_text, load_model_weights, load_timm_state_dict,
                      key_groups, loaded_key, mmseg_neck_key, msvit_key,
                      normalisation_from_cfg_text,
                      rename_keys,
                      read_checkpoint, required_keys, state_dict_of, uncovered_weights)

__all__ = [
    'CheckpointError', 'EVAL_OPTIONAL_PREFIXES', 'FRESH_AT_TRAINING_START', 'read_checkpoint',
    'state_dict_of', 'describe_checkpoint', 'required_keys', 'check_covers', 'uncovered_weights',
    'check_no_foreign_weights', 'foreign_weights', 'file_sha256', 'loaded_key', 'msvit_key',
    'key_groups', 'rename_keys', 'mmseg_neck_key',
    'load_model_weights', 'load_timm_state_dict', 'normalisation_from_cfg_text',
    'literal_from_cfg_text', 'config_text_problem', 'vit_format', 'to_timm_vit', 'checkpoint_to_timm_vit', 'vit_depth',
    'load_pretrained', 'GATE_PREFIX', 'PRIOR_PREFIX', 'extract_gate', 'gate_from_file', 'save_gate',
    'check_gate_compatible', 'load_gate', 'read_gate_meta', 'input_normalisation',
    'check_gate_normalisation'
]
