"""The evidence study's registry (``tools/analysis_tools/msvit_study.py``): the settings, the runs
and where their files go; plain data and small pure helpers.

A *setting* (one of :data:`SETTINGS`, with ``--set KEY=VALUE`` overrides by
:func:`with_overrides`) fixes the data, the model size, the schedules and the budgets;
:func:`runs` turns it into the table of runs: each run's label, the run it starts from, its model
options and its evaluations (a name and the arguments of
:meth:`~mmseg_msvit.analysis.study.StudyEvaluator.evaluate`).
"""
import os.path as osp

#: the source checkout the study runs in: the configs a setting names (relative to it) and the
#: tool that trains one run are there, not in the installed package
REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
#: the classes reported together as the small-object mIoU
SMALL_CLASSES = ('pole', 'ball', 'box')

#: what a study runs without --only: the dense model and its baselines (resolution curve,
#: training-free content gate, label oracle), the paper's recipe, a learned gate on the frozen
#: dense model (``gate_only``: content prior, GBaS and the gate probe), fine-tuning on mixed
#: tokens without the recipe's additions, and the recommended recipe with and without a learned
#: gate
DEFAULT_RUNS = ('dense_pre', 'dense', 'learned_gbas', 'gate_only', 'mixed_content', 'recipe',
                'recipe_gate')

#: The two settings (and a smoke test). ``head``: 'upernet', 'linear' or 'mask' (Segmenter's
#: decoders); ``cls_gate``: the gate the classifier trains and the transferred runs load, 'mlp'
#: (the classification configs' MixedScaleGate) or 'content_prior' (:data:`CONTENT_PRIOR_GATE`).
#: quick: the demo's model (MSViT-Ti + light UPerNet, 128 px crops of 256 px
#: scenes) on 2 CPU cores; full: MSViT-S at 512 px on a GPU, longer schedule.
SETTINGS = {
    'quick': dict(
        seg_config='configs/msvit/demo_msvit_synthetic.py',
        cls_config='configs/msvit_cls/demo_msvit_cls_synthetic.py',
        data=dict(num_train=256, num_val=48, img_size=256), cls_data=dict(num_train=40,
                                                                          num_val=10, img_size=96),
        arch='tiny', width=192, neck_width=96, crop=128, batch_size=8, min_kept=20000,
        pre_iters=600, fine_iters=300, gate_iters=40, gate_lr=3e-3, gate_lr_mult=10.0,
        lr=1.5e-3, fine_lr=5e-4, cls_iters=150, budget=0.42, budgets=(0.25, 0.42, 0.5, 0.6),
        scales=(0.5, 0.625, 0.75, 0.875, 1.0), low_scale=0.75, probe_images=2, num_workers=2,
        head='upernet', cls_gate='mlp', default_runs=DEFAULT_RUNS),
    'full': dict(
        seg_config='configs/msvit/demo_msvit_synthetic.py',
        cls_config='configs/msvit_cls/demo_msvit_cls_synthetic.py',
        data=dict(num_train=2000, num_val=200, img_size=512), cls_data=dict(num_train=400,
                                                                            num_val=50,
                                                                            img_size=224),
        arch='small', width=384, neck_width=192, crop=256, batch_size=16, min_kept=100000,
        pre_iters=8000, fine_iters=4000, gate_iters=2000, gate_lr=2e-3, gate_lr_mult=10.0, lr=1e-3, fine_lr=5e-4,
        cls_iters=3000,
        budget=0.42, budgets=(0.25, 0.42, 0.5, 0.6), scales=(0.5, 0.625, 0.75, 0.875, 1.0),
        low_scale=0.75, probe_images=8, num_workers=4, head='upernet',
        default_runs=DEFAULT_RUNS + ('dense_lowres', 'coarse', 'random_gate', 'content_gate',
                                     'learned_probe', 'gate_only_mlp', 'gate_only_transfer',
                                     'recipe_no_detail')),
    # a few iterations on a few images: checks that every step runs (tests), no result
    'smoke': dict(
        seg_config='configs/msvit/demo_msvit_synthetic.py',
        cls_config='configs/msvit_cls/demo_msvit_cls_synthetic.py',
        data=dict(num_train=8, num_val=2, img_size=128), cls_data=dict(num_train=4, num_val=1,
                                                                       img_size=64),
        arch='tiny', width=192, neck_width=32, crop=64, batch_size=2, min_kept=100,
        pre_iters=2, fine_iters=2, gate_iters=2, gate_lr=1e-3, gate_lr_mult=10.0, lr=1.5e-3, fine_lr=1e-3, cls_iters=2,
        budget=0.5, budgets=(0.25, 0.5), scales=(0.5, 1.0), low_scale=0.5, probe_images=1,
        num_workers=0, head='upernet', cls_gate='mlp', default_runs=DEFAULT_RUNS),
}


#: the recommended recipe's fine-tuning options (configs/msvit/demo_recipe_synthetic.py holds the
#: same; tests/test_study.py checks that they agree)
FEATURE_DISTILL = dict(type='DenseDistillLoss', feature_weight=1.0)
#: the coarse-token embedding options (the residual from the fine patch embeddings, the
#: coarse-scale vector)
DETAIL = dict(coarse_detail=True, coarse_scale_embed=True)
RECIPE = dict(train_budget_range=(0.25, 0.6), coarse_unpool=True, new_lr_mult=10.0,
              distill=FEATURE_DISTILL, **DETAIL)
#: mixed-scale decoding: the neck and head run coarse regions at half resolution (the recipe's,
#: configs/msvit/demo_recipe_synthetic.py)
MIXED_DECODE = dict(coarse_reduction=2)
#: the study's runs with the mixed pass' gradient into the shared weights scaled
#: (``DenseDistillLoss(shared_grad_scale=...)``)
SHARED_GRAD_SCALES = (0.0, 0.25, 1.0)
#: their names begin so
SHARED_RUNS = 'recipe_mixed_head_inplace_contrast_shared'
#: the run whose configuration configs/msvit/demo_recipe_synthetic.py ships (tests/test_study.py
#: checks that they agree)
SHIPPED_RUN = f'{SHARED_RUNS}0.25_dense_stats'
#: the learned gate trained on a frozen model (gate-only runs): an MLP with the content prior
CONTENT_PRIOR_GATE = dict(type='MixedScaleGate', hidden_dims=(256, 256), init_fine_fraction=0.9,
                          content_prior=True)


def runs(setting: dict) -> dict:
    """name -> dict(label, start ('scratch' | 'dense_pre' | another run), model settings,
    evals)."""
    b, budgets, scales = setting['budget'], setting['budgets'], setting['scales']
    forced = dict(force_scale='fine', gate_loss=None, gate_probe=None)
    content_evals = [(f'content{x}', dict(rule='content', budget=x)) for x in budgets]
    learned_evals = [('thr0.5', dict(rule='gate', threshold=0.5))] + \
        [(f'budget{x}', dict(rule='gate', budget=x)) for x in budgets]
    # the classifier's gate (tools/transfer_gate.py's file of the cls run) in place of the
    # model's own, no training on the segmentation data: does a gate trained on classification
    # transfer to segmentation
    transfer_evals = [(f'transfer{x}', dict(rule='transfer', budget=x)) for x in budgets]
    # the recipe trained with mixed-scale decoding (recipe_mixed_head and its variants)
    mixed_head = dict(start='dense_pre', force_scale=None, gate=dict(type='ContentGate'),
                      fine_budget=b, gate_loss=None, gate_probe=None, **RECIPE,
                      **MIXED_DECODE)
    # the same trained in one stage (in-place distillation)
    mixed_head_inplace = {**mixed_head, 'distill': dict(FEATURE_DISTILL, teacher='self')}
    # the configs' content gate: structure and contrast at 4 px
    contrast_gate = dict(type='ContentGate', structure_px=4, contrast=True)

    def own_gate_evals(name, controls=True):
        """A content-gate variant's own gate at every budget (``name``0.42, ...) and every
        region fine; with ``controls``, the pixel energy and the label oracle at the budget."""
        return [(f'{name}{x}', dict(rule='gate', budget=x)) for x in budgets] + \
            [('scale1.0', dict(scale=1.0))] + \
            ([(f'content{b}', dict(rule='content', budget=b)),
              (f'oracle{b}', dict(rule='oracle', budget=b))] if controls else [])
    return {
        # the dense model every other run starts from (the recipe's teacher), with the simple
        # ways of spending fewer GMACs on it: the baselines of the model a user already has
        'dense_pre': dict(label='dense ViT (pre-training; where every run starts)',
                          start='scratch', **forced, iters=setting['pre_iters'],
                          evals=[('scale1.0', dict(scale=1.0)),
                                 (f"scale{setting['low_scale']}",
                                  dict(scale=setting['low_scale'])),
                                 (f'content{b}', dict(rule='content', budget=b))]),
        'dense': dict(
            label='dense ViT', start='dense_pre', **forced,
            evals=[(f'scale{s}', dict(scale=s)) for s in scales] +
            content_evals +
            [(f'random{b}', dict(rule='random', budget=b)), (f'oracle{b}',
                                                             dict(rule='oracle', budget=b))]),
        'dense_lowres': dict(label=f"dense ViT trained at {setting['low_scale']}x",
                             start='dense_pre', **forced, train_scale=setting['low_scale'],
                             evals=[(f"scale{setting['low_scale']}",
                                     dict(scale=setting['low_scale']))]),
        'coarse': dict(label='all coarse', start='dense_pre', force_scale='coarse',
                       gate_loss=None, gate_probe=None,
                       evals=[('coarse', dict(force_scale='coarse'))]),
        'random_gate': dict(label='MSViT, random regions', start='dense_pre', force_scale=None,
                            gate=dict(type='RandomGate'), fine_budget=b, gate_loss=None,
                            gate_probe=None,
                            evals=[(f'random{b}', dict(rule='random', budget=b)),
                                   (f'content{b}', dict(rule='content', budget=b))]),
        'content_gate': dict(label='MSViT, content gate', start='dense_pre', force_scale=None,
                             gate=dict(type='ContentGate'), fine_budget=b, gate_loss=None,
                             gate_probe=None,
                             evals=content_evals),
        'learned_gbas': dict(label='MSViT, learned gate (GBaS, paper)', start='dense_pre',
                             force_scale=None, gate_probe=None, evals=learned_evals),
        'learned_probe': dict(label='MSViT, learned gate + probe', start='dense_pre',
                              force_scale=None, evals=learned_evals),
        'learned_transfer': dict(label='MSViT, transferred gate + probe', start='dense_pre',
                                 force_scale=None, gate_init=True, evals=learned_evals),
        'learned_content': dict(label='MSViT, learned gate with content prior + probe',
                                start='dense_pre', force_scale=None,
                                gate=CONTENT_PRIOR_GATE,
                                evals=learned_evals),
        'gate_only': dict(label='dense ViT + learned gate (content prior + probe, gate only)',
                          start='dense', force_scale=None, train_gate_only=True,
                          iters=setting['gate_iters'],
                          gate=CONTENT_PRIOR_GATE,
                          evals=learned_evals),
        'gate_only_mlp': dict(label='dense ViT + learned gate (MLP + probe, gate only)',
                              start='dense', force_scale=None, train_gate_only=True,
                              iters=setting['gate_iters'], evals=learned_evals),
        'gate_only_transfer': dict(
            label='dense ViT + transferred gate (MLP + probe, gate only)', start='dense',
            force_scale=None, train_gate_only=True, gate_init=True, iters=setting['gate_iters'],
            evals=learned_evals),
        # fine-tuning the dense ViT on mixed tokens (content gate, budget drawn per batch), and
        # what was tried to make it pay off (docs/study.md, "How the recipe was found")
        **{name: dict(dict(label=f'MSViT, content gate, {what}', start='dense_pre',
                           force_scale=None, gate=dict(type='ContentGate'), fine_budget=b,
                           train_budget_range=(0.25, 1.0), gate_loss=None, gate_probe=None,
                           evals=content_evals + [('scale1.0', dict(scale=1.0))]), **extra)
           for name, what, extra in (
               ('mixed_content', 'fine-tuned on budgets 0.25-1.0', {}),
               ('mixed_detail', 'budgets 0.25-1.0, coarse detail', dict(**DETAIL)),
               ('mixed_distill', 'budgets 0.25-1.0, distilled (logits)',
                dict(distill=dict(type='DenseDistillLoss'))),
               ('mixed_detail_distill', 'budgets 0.25-1.0, coarse detail, distilled (logits)',
                dict(**DETAIL, distill=dict(type='DenseDistillLoss'))),
               ('mixed_detail_distill_feat', 'budgets 0.25-1.0, coarse detail, distilled '
                '(logits + features)', dict(**DETAIL, distill=FEATURE_DISTILL)),
               ('mixed_detail_unpool_feat', 'budgets 0.25-1.0, coarse detail + unpooling, '
                'distilled (logits + features)', {**RECIPE, 'train_budget_range': (0.25, 1.0)}),
               ('recipe_no_detail', 'as the recipe without the coarse-token detail',
                {**RECIPE, 'coarse_detail': False, 'coarse_scale_embed': False}),
               ('recipe_feat3', 'as the recipe, feature distillation x3',
                {**RECIPE, 'distill': dict(FEATURE_DISTILL, feature_weight=3.0)}),
               ('recipe_inplace', 'as the recipe, the dense pass of the model itself as teacher '
                '(in-place distillation)',
                {**RECIPE, 'distill': dict(FEATURE_DISTILL, teacher='self')}),
           )},
        # the recommended recipe: dense ViT, then fine-tuned on mixed tokens with the neck's
        # coarse unpooling, distilled from the dense model; then (optionally) a learned gate
        'recipe': dict(
            label='recommended: dense ViT, then fine-tuned on mixed tokens (content gate, '
            'budgets 0.25-0.6, coarse detail + unpooling, distilled from the dense model)',
            start='dense_pre', force_scale=None, gate=dict(type='ContentGate'), fine_budget=b,
            gate_loss=None, gate_probe=None, **RECIPE,
            evals=content_evals +
            [(f'oracle{b}', dict(rule='oracle', budget=b)), ('scale1.0', dict(scale=1.0))] +
            # its neck and head run with mixed-scale decoding, without training for it: every
            # level finer than the tokens, or the finest (x4) only (UPerNet: a linear head has
            # no level finer than the tokens)
            [(f'{name}_content{x}', dict(rule='content', budget=x, decode=decode))
             for name, decode in (('mixed_decode', MIXED_DECODE),
                                  ('mixed_decode_x4', dict(MIXED_DECODE, mixed_scales=(4, ))))
             for x in sorted({b, 0.5}) if setting['head'] == 'upernet']),
        # the recipe with mixed-scale decoding: the neck and head run coarse regions at half
        # resolution (docs/method.md, "Mixed-scale decoding"), trained and distilled the same way
        'recipe_mixed_head': dict(
            label='recipe + mixed-scale decoding (neck and head: coarse regions at 1/2 '
            'resolution)', **mixed_head,
            evals=content_evals +
            [(f'oracle{b}', dict(rule='oracle', budget=b)), ('scale1.0', dict(scale=1.0)),
             (f'dense_decode_content{b}', dict(rule='content', budget=b,
                                               decode=dict(coarse_reduction=None)))] +
            transfer_evals),
        # the same with only the finest level (x4, the neck's convs[0] and what reads it)
        # decoding mixed scales, the x2 level dense: more GMACs, fewer coarse pixels
        'recipe_mixed_head_x4': dict(
            label='recipe + mixed-scale decoding at the x4 level only (x2 dense)',
            **mixed_head, mixed_scales=(4, ),
            evals=content_evals +
            [('scale1.0', dict(scale=1.0))]),
        # the same trained in one stage: the model's own dense pass (task loss) teaches its
        # mixed pass (in-place distillation), no frozen teacher
        'recipe_mixed_head_inplace': dict(
            label='recipe + mixed-scale decoding, in-place distillation (the dense pass of the '
            'model itself as teacher)',
            **mixed_head_inplace,
            evals=content_evals +
            [('scale1.0', dict(scale=1.0)),
             (f'dense_decode_content{b}', dict(rule='content', budget=b,
                                               decode=dict(coarse_reduction=None)))]),
        # the same with the content gate scoring structure (the variance of 4 px averages,
        # blind to finer grain) instead of the pixel energy the coarse token loses
        'recipe_mixed_head_inplace_structure': dict(
            label='recipe + mixed-scale decoding, in-place distillation, content gate on '
            'structure (4 px)',
            **{**mixed_head_inplace, 'gate': dict(type='ContentGate', structure_px=4)},
            evals=own_gate_evals('structure')),
        # the same with the structure score plus the variance of the 4 px cells' contrast (their
        # standard deviation): borders of a texture whose mean colour is its surround's
        'recipe_mixed_head_inplace_contrast': dict(
            label='recipe + mixed-scale decoding, in-place distillation, content gate on '
            'structure and contrast (4 px)',
            **{**mixed_head_inplace, 'gate': contrast_gate},
            evals=own_gate_evals('contrast')),
        # the same with the mixed-scale pass taught by the dense pass alone (no task loss of
        # its own), as slimmable networks train their smaller widths
        'recipe_mixed_head_inplace_contrast_kd': dict(
            label='recipe + mixed-scale decoding, in-place distillation (the mixed pass without '
            'a task loss), content gate on structure and contrast (4 px)',
            **{**mixed_head_inplace, 'gate': contrast_gate,
               'distill': dict(FEATURE_DISTILL, teacher='self', student_task_loss=False)},
            evals=own_gate_evals('contrast', controls=False)),
        # the same with what the mixed-scale pass sends into the weights the dense pass also
        # uses scaled (0: the shared weights follow the dense pass alone, the mixed pass trains
        # only the coarse-only parts): does sharing them cost the dense pass; ``_dense_stats``:
        # BatchNorm running statistics recorded from the dense pass alone (at 1.0 only that:
        # without it, 1.0 is recipe_mixed_head_inplace_contrast)
        **{f'{SHARED_RUNS}{g}{"_dense_stats" if stats else ""}': dict(
            label=f'recipe + mixed-scale decoding, in-place distillation, the mixed pass\' '
            f'gradient into the shared weights x{g}'
            f'{", running statistics from the dense pass" if stats else ""}, content gate on '
            'structure and contrast',
            **{**mixed_head_inplace, 'gate': contrast_gate,
               'distill': dict(FEATURE_DISTILL, teacher='self', shared_grad_scale=g,
                               dense_running_stats=stats)},
            evals=own_gate_evals('contrast', controls=False))
           for g in SHARED_GRAD_SCALES for stats in (False, True) if stats or g != 1.0},
        # a learned gate on the mixed-decoding recipe (gate only, as recipe_gate): its fine
        # regions are where the head runs at full resolution too
        'recipe_mixed_head_gate': dict(
            label='recipe + mixed-scale decoding + learned gate (content prior + probe, gate '
            'only)', start='recipe_mixed_head', force_scale=None, train_gate_only=True,
            iters=setting['gate_iters'], coarse_unpool=True, **DETAIL, **MIXED_DECODE,
            gate=CONTENT_PRIOR_GATE,
            evals=learned_evals),
        # the gate of the classifier (the card's transfer) fine-tuned on the segmentation data
        # (gate only, as recipe_mixed_head_gate), and the same gate (an MLP without the content
        # prior, as the classifier's) trained there from scratch: what the transfer is worth
        'recipe_mixed_head_gate_transfer': dict(
            label='recipe + mixed-scale decoding + gate transferred from the classifier ('
            f"{'content prior' if setting['cls_gate'] == 'content_prior' else 'MLP'} + probe, "
            'gate only)', start='recipe_mixed_head', force_scale=None,
            train_gate_only=True, gate_init=True, iters=setting['gate_iters'],
            coarse_unpool=True, **DETAIL, **MIXED_DECODE, evals=learned_evals),
        'recipe_mixed_head_gate_mlp': dict(
            label='recipe + mixed-scale decoding + learned gate (MLP + probe, gate only)',
            start='recipe_mixed_head', force_scale=None, train_gate_only=True,
            iters=setting['gate_iters'], coarse_unpool=True, **DETAIL, **MIXED_DECODE,
            evals=learned_evals),
        # the simple alternative at about the same whole-model GMACs: the dense ViT with its
        # neck and head at half resolution everywhere, fine-tuned and distilled as the recipe
        'dense_half_head': dict(
            label='dense ViT, neck and head at 1/2 resolution everywhere (fine-tuned, '
            'distilled)', start='dense_pre', **forced, coarse_reduction=2,
            decode_regions='coarse', distill=FEATURE_DISTILL,
            evals=[('scale1.0', dict(scale=1.0))]),
        'recipe_gate': dict(
            label='recommended + learned gate (content prior + probe, gate only)',
            start='recipe', force_scale=None, train_gate_only=True, iters=setting['gate_iters'],
            coarse_unpool=True, **DETAIL, gate=CONTENT_PRIOR_GATE,
            evals=learned_evals),
        'learned_scratch': dict(label='MSViT from scratch (demo recipe)', start='scratch',
                                force_scale=None,
                                iters=setting['pre_iters'] + setting['fine_iters'],
                                evals=learned_evals[:1] + [(f'budget{b}',
                                                            dict(rule='gate', budget=b))]),
    }


def with_overrides(setting: dict, pairs) -> dict:
    """``setting`` with ``KEY=VALUE`` overrides (values parsed as Python literals, never run)."""
    import ast
    setting = dict(setting)
    for pair in pairs:
        key, sep, text = pair.partition('=')
        if not sep or key not in setting:
            raise ValueError(f'--set {pair!r}: expected KEY=VALUE with KEY one of '
                             f'{sorted(setting)}')
        old = setting[key]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            if not isinstance(old, str):
                raise ValueError(f'--set {pair!r}: {text!r} is not a Python literal') from None
            value = text  # a word for a text setting (head=linear)
        numbers = (int, float)
        if not (type(value) is type(old) or (isinstance(old, numbers) and isinstance(
                value, numbers) and not isinstance(value, bool)) or (
                    isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)))):
            raise ValueError(f'--set {pair!r}: {key} is a {type(old).__name__} '
                             f'({old!r}), got a {type(value).__name__}')
        setting[key] = tuple(value) if isinstance(old, tuple) else value
    return setting


def run_dir(out_dir, seed, run):
    """The folder of one training (checkpoints, logs, its training time) of ``run`` for ``seed``."""
    return osp.join(out_dir, f'seed{seed}', run)


def final_checkpoint(out_dir, seed, run, setting):
    """The checkpoint a finished training of ``run`` leaves (``'cls'``: the classifier the
    transferred gates come from)."""
    iters = runs(setting)[run].get('iters', setting['fine_iters']) if run != 'cls' else \
        setting['cls_iters']
    return osp.join(run_dir(out_dir, seed, run), f'iter_{iters}.pth')


def gate_file(out_dir, seed):
    """The gate extracted from the classifier of ``seed`` (what ``gate_init`` runs start from)."""
    return osp.join(run_dir(out_dir, seed, 'cls'), 'gate.pth')


def resolve_setting(setting) -> dict:
    """A setting's dict: ``setting`` itself when it is one (a setting with its overrides), else
    the one :data:`SETTINGS` names."""
    if isinstance(setting, dict):
        return setting
    if setting not in SETTINGS:
        raise ValueError(f'msvit_study: setting must be one of {sorted(SETTINGS)} or a setting '
                         f'dict, got {setting!r}')
    return SETTINGS[setting]
