"""The evidence study: random gate, label oracle, evaluator, aggregation and the tool end to end."""
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch

from mmseg_msvit.analysis import backbone_macs
from mmseg_msvit.analysis.gate_alignment import DETAILED, UNIFORM, region_detail_kinds
from mmseg_msvit.analysis.study import StudyEvaluator, compare, oracle_fine_mask, summarise
from mmseg_msvit.datasets.synthetic import SCENE_CLASSES, make_synthetic
from mmseg_msvit.models import MSViT, RandomGate
from mmseg_msvit.models.tokenizer import regions_to_rows

from _helpers import REPO, load_tool
from test_segmentor import build, segmentor_cfg


def test_random_gate_keeps_the_budget_with_fresh_random_regions():
    model = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                  out_indices=(1, ), gate=dict(type='RandomGate'), fine_budget=0.5).eval()
    assert not list(model.gate.parameters())
    img = torch.zeros(3, 3, 128, 128)  # 16 regions, every image the same
    torch.manual_seed(0)
    with torch.no_grad():
        first = model(img)[0].layout.fine_mask
        second = model(img)[0].layout.fine_mask
    assert first.flatten(1).sum(1).tolist() == [8, 8, 8]
    # it ignores the image: identical images get different regions, and so do two forwards
    assert not torch.equal(first[0], first[1]) and not torch.equal(first, second)
    # it costs nothing beyond the tokens
    assert model.gate.macs_per_region == 0
    with pytest.raises(ValueError, match='coarse_patch_size'):
        RandomGate(coarse_patch_size=0)


def test_oracle_splits_the_regions_where_classes_meet_first():
    label = torch.zeros(64, 96, dtype=torch.long)  # 2 x 3 regions of 32 px
    label[:, 40:44] = 1  # a thin pole inside region (*, 1)
    label[10:20, 70:80] = 2  # a small box inside region (0, 2)
    img = torch.zeros(1, 3, 64, 96)
    img[0, :, 0:32, 0:32] = torch.randn(3, 32, 32)  # texture in a uniform region
    mask = oracle_fine_mask(label, img, 32, num_fine=3)
    kinds = torch.as_tensor(region_detail_kinds(label.numpy(), 32))
    assert mask.shape == (1, 2, 3) and int(mask.sum()) == 3
    assert torch.equal(mask[0], kinds == DETAILED)
    # the rest of the budget goes to the region the coarse token blurs most (the texture)
    mask = oracle_fine_mask(label, img, 32, num_fine=4)
    assert bool(mask[0, 0, 0]) and int(mask[0][kinds == UNIFORM].sum()) == 1
    with pytest.raises(ValueError, match='scale 1.0'):
        oracle_fine_mask(label[:32], img, 32, num_fine=1)


def records_of(run, name, mious, gmacs=1.0):
    return [dict(run=run, eval=name, seed=seed, mIoU=m, small_mIoU=m / 2, gmacs=gmacs,
                 gmacs_min=gmacs, gmacs_max=gmacs, fine_fraction=0.5, fine_on_detailed=0.8,
                 fine_on_uniform=0.2, train_seconds=10.0 + seed, iou={'a': m, 'b': float('nan')})
            for seed, m in enumerate(mious)]


def test_summary_is_mean_and_sample_std_over_seeds_and_comparisons_pair_seeds():
    records = records_of('gated', 'b0.4', [60.0, 62.0, 64.0], gmacs=0.9) + \
        records_of('low', 's0.75', [58.0, 58.5, 59.0], gmacs=1.0)
    rows = {row['run']: row for row in summarise(records)}
    assert rows['gated']['mIoU'] == pytest.approx(62.0)
    assert rows['gated']['mIoU_std'] == pytest.approx(2.0)  # ddof=1
    assert rows['gated']['seeds'] == [0, 1, 2]
    assert rows['gated']['train_seconds'] == pytest.approx(11.0)
    assert rows['gated']['iou']['a'] == pytest.approx(62.0) and math.isnan(rows['gated']['iou']['b'])
    result = compare(records, ('gated', 'b0.4'), ('low', 's0.75'))
    assert result['delta'] == pytest.approx(3.5)  # (2 + 3.5 + 5) / 3
    assert result['delta_std'] == pytest.approx(1.5)
    assert result['gmacs_ratio'] == pytest.approx(0.9)
    assert result['separated'] is True  # 62 +- 2 vs 58.5 +- 0.5
    result = compare(records, ('low', 's0.75'), ('gated', 'b0.4'))
    assert result['delta'] == pytest.approx(-3.5) and result['separated'] is True
    close = records_of('near', 'x', [61.0, 63.0, 65.0], gmacs=0.9)
    assert compare(records + close, ('gated', 'b0.4'), ('near', 'x'))['separated'] is False
    one_seed = records_of('solo', 'x', [70.0])
    assert compare(records + one_seed, ('solo', 'x'), ('gated', 'b0.4'))['separated'] is None
    assert compare(records, ('gated', 'b0.4'), ('missing', 'x')) is None


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('scenes'))
    make_synthetic(root, layout='ade20k', num_train=1, num_val=3, img_size=(128, 128))
    return root


def evaluator_for(root):
    dataset = dict(type='SyntheticScenesDataset', data_root=root,
                   data_prefix=dict(img_path='images/validation',
                                    seg_map_path='annotations/validation'),
                   pipeline=[dict(type='LoadImageFromFile'),
                             dict(type='Resize', scale=(128, 128), keep_ratio=True),
                             dict(type='LoadAnnotations'), dict(type='PackSegInputs')])
    return StudyEvaluator(dataset, (128, 128), SCENE_CLASSES, ('pole', 'ball', 'box'))


def scene_segmentor():
    """A small eval-mode segmentor with an MLP gate, for the synthetic scenes' classes (seed 0)."""
    cfg = segmentor_cfg()
    cfg['decode_head'] = dict(cfg['decode_head'], num_classes=len(SCENE_CLASSES))
    cfg['auxiliary_head'] = dict(cfg['auxiliary_head'], num_classes=len(SCENE_CLASSES))
    torch.manual_seed(0)
    return build(cfg).eval()


def test_evaluator_reports_the_cost_of_each_rule_and_restores_the_model(scenes):
    from mmengine.registry import DefaultScope
    from mmseg.evaluation.metrics import IoUMetric
    model = scene_segmentor()
    gate = model.backbone.gate
    evaluator = evaluator_for(scenes)
    with DefaultScope.overwrite_default_scope('mmseg'):
        dense = evaluator.evaluate(model, rule='forced', force_scale='fine')
        coarse = evaluator.evaluate(model, rule='forced', force_scale='coarse')
        content = evaluator.evaluate(model, rule='content', budget=0.5)
        oracle = evaluator.evaluate(model, rule='oracle', budget=0.5)
        half = evaluator.evaluate(model, rule='forced', scale=0.5)
    # the model is as it was
    assert model.backbone.gate is gate and model.backbone.force_scale is None
    assert model.backbone.fine_budget is None and model.backbone.gate_threshold == 0.5
    # costs: the backbone's own formula on the evaluated input
    img = torch.zeros(1, 3, 128, 128)
    model.backbone.force_scale = 'fine'
    assert dense['gmacs'] == pytest.approx(float(backbone_macs(model.backbone, img)[0]) / 1e9)
    model.backbone.force_scale = None
    assert coarse['gmacs'] < content['gmacs'] < dense['gmacs']
    assert content['fine_fraction'] == pytest.approx(8 / 16)  # 16 regions, budget 0.5
    # same tokens; the content gate's own pass over the pixels is counted, the oracle has none
    assert (content['gmacs'] - oracle['gmacs']) * 1e9 == pytest.approx(16 * 2 * 3 * 32 * 32)
    model.backbone.force_scale = 'fine'
    assert half['gmacs'] == pytest.approx(
        float(backbone_macs(model.backbone, torch.zeros(1, 3, 64, 64))[0]) / 1e9)
    model.backbone.force_scale = None
    assert math.isnan(half['fine_on_detailed'])  # labels not on the input grid at scale 0.5
    # the oracle spends its budget on detailed regions before uniform ones
    assert oracle['fine_on_uniform'] == oracle['fine_on_uniform']  # there are uniform regions
    assert oracle['fine_on_detailed'] >= content['fine_on_detailed']
    assert oracle['fine_on_uniform'] <= content['fine_on_uniform']
    # mIoU is the mean over classes of the accumulated IoU; recompute it for the dense rule
    for result in (dense, coarse, content, oracle):
        values = np.array(list(result['iou'].values()), dtype=float)
        assert result['mIoU'] == pytest.approx(np.nanmean(values))
        assert result['small_mIoU'] == pytest.approx(
            np.nanmean([result['iou'][c] for c in ('pole', 'ball', 'box')]))
    total_i = torch.zeros(len(SCENE_CLASSES), dtype=torch.float64)
    total_u = torch.zeros_like(total_i)
    from mmengine.dataset import pseudo_collate
    model.backbone.force_scale = 'fine'
    with torch.no_grad(), DefaultScope.overwrite_default_scope('mmseg'):
        for sample in evaluator.samples(1.0):
            data = model.data_preprocessor(pseudo_collate([sample]), False)
            pred = model.predict(data['inputs'], data['data_samples'])[0]
            i, u, _, _ = IoUMetric.intersect_and_union(
                pred.pred_sem_seg.data[0], pred.gt_sem_seg.data[0], len(SCENE_CLASSES), 255)
            total_i += i.double()
            total_u += u.double()
    with np.errstate(invalid='ignore'):
        expected = (total_i / total_u).numpy() * 100
    assert dense['mIoU'] == pytest.approx(float(np.nanmean(expected)))
    with pytest.raises(ValueError, match='needs a budget'):
        evaluator.evaluate(model, rule='content')
    with pytest.raises(ValueError, match='rule must be one of'):
        evaluator.evaluate(model, rule='magic')


def test_the_whole_model_plot_draws_every_family(tmp_path, monkeypatch):
    """One curve per family of WHOLE_MODEL_FAMILIES however many there are (the markers cycle:
    an eighth family once crashed the finished study), each point tagged with its input scale
    or budget whatever the gate's name."""
    import matplotlib.axes

    from mmseg_msvit.analysis.study import report
    rows = [dict(family=family, eval=name, model_gmacs=1.0 + 0.1 * i + 0.01 * j,
                 mIoU=80.0 + i, mIoU_std=0.1)
            for i, family in enumerate(report.WHOLE_MODEL_FAMILIES)
            for j, name in enumerate(('scale0.75', 'contrast0.42', 'structure0.5'))]
    rows.append(dict(family=report.SHIPPED_FAMILY, eval='scale1.0', model_gmacs=4.0, mIoU=85.0,
                     mIoU_std=0.1))  # the shipped recipe's budget 1.0: not an input scale
    families = report.WHOLE_MODEL_FAMILIES + ('an extra family', 'and another')
    monkeypatch.setattr(report, 'WHOLE_MODEL_FAMILIES', families)
    rows += [dict(family=family, eval='contrast0.42', model_gmacs=2.0, mIoU=70.0, mIoU_std=0.1)
             for family in families[-2:]]
    tags, curves = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, 'annotate',
                        lambda self, text, *a, **k: tags.append(text))
    real_errorbar = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, 'errorbar',
                        lambda self, *a, **k: curves.append(k['label']) or
                        real_errorbar(self, *a, **k))
    path = tmp_path / 'whole_model.png'
    report.plot_whole_model(rows, str(path))
    assert path.stat().st_size > 0
    assert len(families) > 8  # more than the markers ('osD^vP*X'): they cycle
    assert curves == list(families)
    assert set(tags) == {'x0.75', '0.42', '0.5', '1.0'}


def test_study_tool_runs_resumes_and_reports(tmp_path):
    study = load_tool('tools/analysis_tools/msvit_study.py')
    out = str(tmp_path / 'study')
    argv = ['--setting', 'smoke', '--seeds', '0', '--out-dir', out, '--only', 'coarse',
            'random_gate']
    study.main(argv)
    with open(osp.join(out, 'results.jsonl')) as f:
        records = [json.loads(line) for line in f]
    assert {(r['run'], r['eval']) for r in records} == {
        ('dense_pre', 'scale1.0'), ('dense_pre', 'scale0.5'), ('dense_pre', 'content0.5'),
        ('coarse', 'coarse'), ('random_gate', 'random0.5'), ('random_gate', 'content0.5')}
    by_eval = {(r['run'], r['eval']): r for r in records}
    assert by_eval[('coarse', 'coarse')]['fine_fraction'] == 0.0
    assert by_eval[('random_gate', 'random0.5')]['fine_fraction'] == pytest.approx(0.5)
    assert by_eval[('coarse', 'coarse')]['gmacs'] < by_eval[('random_gate', 'random0.5')][
        'gmacs'] < by_eval[('dense_pre', 'scale1.0')]['gmacs']
    for name in ('summary.csv', 'summary.json', 'summary.md', 'study.png'):
        assert osp.getsize(osp.join(out, name)) > 0
    with open(osp.join(out, 'summary.md')) as f:
        table = f.read()
    assert 'all coarse, coarse' in table and 'random-trained model' in table
    # a second call finds everything done: no training, no new result
    steps = study.Study(study.parse_args(argv + ['--out-dir', out])).plan()
    assert steps == []
    study.main(argv)
    with open(osp.join(out, 'results.jsonl')) as f:
        assert len(f.readlines()) == len(records)
    with pytest.raises(ValueError, match='no such run'):
        study.main(['--setting', 'smoke', '--out-dir', out, '--only', 'nonsense'])
    # the time of a resumed training counts all of its parts (TrainingTimeHook in the child)
    with open(osp.join(out, 'seed0', 'coarse', 'train_time.json')) as f:
        assert json.load(f)['seconds'] > 0
    # an interrupted write leaves a torn last line: dropped with a note, the step runs again
    path = osp.join(out, 'results.jsonl')
    with open(path) as f:
        complete = f.read()
    with open(path, 'a') as f:
        f.write('{"seed": 0, "run": "coarse", "ev')
    study.main(argv + ['--report-only'])
    with open(path) as f:
        assert f.read() == complete
    # a result recorded when backbone GMACs held the neck's unpooling is named in the summary
    first, *rest = complete.splitlines()
    assert json.loads(first)['unpool_in_neck'] is True
    older = json.loads(first)
    del older['unpool_in_neck']
    with open(path, 'w') as f:
        f.write('\n'.join([json.dumps(older)] + rest) + '\n')
    study.main(argv + ['--report-only'])
    with open(osp.join(out, 'summary.md')) as f:
        assert f'1 of the {len(records)} results were recorded when backbone GMACs' in f.read()
    with open(path, 'w') as f:
        f.write(complete)
    study.main(argv + ['--report-only'])
    with open(osp.join(out, 'summary.md')) as f:
        assert 'were recorded when backbone GMACs' not in f.read()
    with open(path, 'a') as f:
        f.write('not json\n' + complete.splitlines()[0] + '\n')
    with pytest.raises(ValueError, match=r'results.jsonl, line \d+: not a JSON record'):
        study.main(argv + ['--report-only'])
    with pytest.raises(SystemExit):  # --set names a setting key and a value of its kind
        study.parse_args(['--setting', 'smoke', '--set', 'pre_iters=abc'])
    with pytest.raises(SystemExit):
        study.parse_args(['--setting', 'smoke', '--set', 'nonsense=1'])
    # runs with other scenes or values get their own default folder (never another run's models)
    assert study.parse_args(['--setting', 'smoke']).out_dir == osp.join('work_dirs', 'study_smoke')
    other = study.parse_args(['--setting', 'smoke', '--scenes', 'shifted',
                              '--set', 'fine_iters=100', 'head=linear'])
    assert other.out_dir == osp.join('work_dirs', 'study_smoke_shifted_fine_iters-100_head-linear')


def test_content_prior_gate_starts_as_the_content_ranking_and_learns_on_top(tmp_path):
    from mmseg_msvit.models import ContentGate, MixedScaleGate
    torch.manual_seed(0)
    gate = MixedScaleGate(hidden_dims=(16, ), content_prior=True)
    img = torch.zeros(2, 3, 128, 128)  # flat, but for textured regions
    img[0, :, :32, :64] = torch.randn(3, 32, 64)
    img[1, :, 64:, 96:] = torch.randn(3, 64, 32)
    logits = gate(img)
    content = ContentGate()(img)
    centred = content - content.mean((-2, -1), keepdim=True)
    mlp_part = gate.mlp(regions_to_rows(img, 32)).squeeze(-1)
    torch.testing.assert_close(logits - mlp_part, centred)
    # so its ranking within an image is the content gate's while the MLP part is small
    assert float(mlp_part.abs().max()) < 0.1 * float(centred.abs().max())
    # the weight of the content score and the MLP both receive gradient
    logits.sum().backward()
    assert gate.content_weight.grad is not None and gate.mlp[0].weight.grad is not None
    assert gate.macs_per_region == 3072 * 16 + 16 + ContentGate().macs_per_region
    with pytest.raises(ValueError, match='content_prior'):
        MixedScaleGate(content_prior='yes')


def test_gate_files_record_the_content_prior_and_refuse_a_mismatch(tmp_path):
    from mmseg_msvit.models.checkpoints import extract_gate, load_gate, save_gate
    backbone = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64,
                     out_indices=(1, ), gate=dict(type='MixedScaleGate', hidden_dims=(16, ),
                                                  content_prior=True))
    with torch.no_grad():
        backbone.gate.content_weight.fill_(0.25)
    source = str(tmp_path / 'model.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()}},
               source)
    gate = extract_gate(source, mean=[0.0] * 3, std=[1.0] * 3, bgr_to_rgb=False)
    assert gate['meta']['content_prior'] is True
    path = str(tmp_path / 'gate.pth')
    save_gate(gate, path)
    same = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64, out_indices=(1, ),
                 gate=dict(type='MixedScaleGate', hidden_dims=(16, ), content_prior=True))
    load_gate(same, path)
    assert float(same.gate.content_weight) == 0.25
    plain = MSViT(arch=dict(embed_dims=48, depth=2, num_heads=3), img_size=64, out_indices=(1, ),
                  gate=dict(type='MixedScaleGate', hidden_dims=(16, )))
    with pytest.raises(ValueError, match='content_prior=True'):
        load_gate(plain, path)


def test_train_gate_only_changes_the_gate_and_nothing_else():
    import copy

    from mmengine.optim import OptimWrapper

    from test_segmentor import make_batch
    torch.manual_seed(0)
    cfg = segmentor_cfg(train_gate_only=True, gate_probe=dict(type='GateProbe', num_images=1,
                                                              regions_per_image=1))
    model = build(cfg)
    model.train()
    # neck, heads and blocks in eval mode (BatchNorm statistics frozen), the gate in training
    assert not model.decode_head.training and not model.backbone.blocks.training
    assert model.backbone.gate.training and model.backbone.training
    before = copy.deepcopy(model.state_dict())
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1))
    log_vars = model.train_step(make_batch(), optim)
    assert 'loss_gate' in log_vars and 'loss_gate_probe' in log_vars
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(('backbone.gate.', 'gate_loss.')) for k in changed), \
        sorted(changed)
    assert any(k.startswith('backbone.gate.mlp') for k in changed)
    forced = dict(cfg['backbone'], force_scale='fine')
    with pytest.raises(ValueError, match='train_gate_only needs a gate'):
        build(segmentor_cfg(backbone=forced, gate_loss=None, train_gate_only=True))


def test_the_study_measures_the_shipped_recipe(tmp_path):
    """What the study trains as `dense_pre` / `recipe_mixed_head_inplace_contrast_shared0.25_
    dense_stats` is what
    configs/msvit/demo_dense_synthetic.py and demo_recipe_synthetic.py ship (model options, the
    gate, distillation, schedule, learning rates, augmentation)."""
    from mmengine.config import Config

    from mmseg_msvit.analysis.study.configs import seg_config
    from mmseg_msvit.analysis.study.runs import SETTINGS, SHIPPED_RUN
    setting = SETTINGS['quick']
    for run, shipped_path in (('dense_pre', 'demo_dense_synthetic.py'),
                              (SHIPPED_RUN, 'demo_recipe_synthetic.py')):
        measured = seg_config('quick', run, 0, str(tmp_path))
        shipped = Config.fromfile(osp.join(REPO, 'configs', 'msvit', shipped_path))
        for key in ('force_scale', 'fine_budget', 'train_budget_range', 'arch',
                    'coarse_detail', 'coarse_scale_embed'):
            assert measured.model.backbone.get(key) == shipped.model.backbone.get(key), key
        assert dict(measured.model.backbone.gate) == dict(shipped.model.backbone.gate) or \
            run == 'dense_pre'
        assert bool(measured.model.neck.get('coarse_unpool')) == \
            bool(shipped.model.neck.get('coarse_unpool'))
        assert measured.model.neck.get('coarse_reduction') == \
            shipped.model.neck.get('coarse_reduction')
        assert measured.model.decode_head.type == shipped.model.decode_head.type == \
            'MixedScaleUPerHead'
        distill = measured.model.get('distill')
        if distill is not None:
            distill = {k: v for k, v in distill.items() if k != 'teacher_checkpoint'}
        assert distill == shipped.model.get('distill')
        assert measured.model.get('gate_loss') is None and shipped.model.get('gate_loss') is None
        assert measured.train_cfg.max_iters == shipped.train_cfg.max_iters == setting[
            'pre_iters' if run == 'dense_pre' else 'fine_iters']
        assert measured.optim_wrapper.optimizer.lr == shipped.optim_wrapper.optimizer.lr
        keys = shipped.optim_wrapper.paramwise_cfg.custom_keys
        for key, value in measured.optim_wrapper.paramwise_cfg.custom_keys.items():
            if key != 'backbone.gate':  # the study's x10 for gates (the content gate has none)
                assert keys[key] == value, key
        resize = [t for t in shipped.train_dataloader.dataset.pipeline
                  if t['type'] == 'RandomResize'][0]
        assert tuple(resize['ratio_range']) == (0.5, 1.25)
        assert [s['type'] for s in measured.param_scheduler] == \
            [s['type'] for s in shipped.param_scheduler]
        assert [s['end'] for s in measured.param_scheduler] == \
            [s['end'] for s in shipped.param_scheduler]


def test_every_run_of_the_linear_head_study_can_run():
    """--set head=linear: a linear head has no level finer than the tokens, so the recipe's
    evaluations with mixed-scale decoding (UPerNet only) are not asked of it (they crashed the
    study); with UPerNet they are."""
    from mmseg_msvit.analysis.study.runs import SETTINGS, runs
    linear = runs(dict(SETTINGS['quick'], head='linear'))['recipe']['evals']
    upernet = runs(SETTINGS['quick'])['recipe']['evals']
    assert not [name for name, _ in linear if 'decode' in name]
    assert [name for name, _ in upernet if name.startswith('mixed_decode')]
    assert {name for name, _ in linear} < {name for name, _ in upernet}


def test_a_transferred_gate_is_evaluated_as_the_models_own_would_be(scenes, tmp_path):
    """Rule 'transfer' substitutes the gate of a gate file at a budget: with the file made from
    the model's own gate it decides as the model's gate does (same results); a file made from
    another gate decides otherwise; the model keeps its gate, and a file that does not fit the
    model (input normalisation) is refused by name."""
    from mmengine.registry import DefaultScope

    from mmseg_msvit.models.checkpoints import extract_gate, input_normalisation, save_gate
    model = scene_segmentor()
    gate = model.backbone.gate
    norm = input_normalisation(model.data_preprocessor)

    def gate_file(module, name, **normalisation):
        source = str(tmp_path / f'{name}.pth')
        torch.save({'state_dict': {f'backbone.gate.{k}': v for k, v in module.state_dict().items()}
                    | {'backbone.patch_embed.proj.weight': model.backbone.patch_embed.proj.weight}},
                   source)
        path = str(tmp_path / f'{name}_gate.pth')
        save_gate(extract_gate(source, **{**norm, **normalisation}), path)
        return path

    own = gate_file(gate, 'own')
    other_gate = type(gate)(hidden_dims=(16, ))
    torch.nn.init.normal_(other_gate.mlp[-1].weight, std=1.0)  # decisions of its own
    other = gate_file(other_gate, 'other')
    evaluator = evaluator_for(scenes)
    with DefaultScope.overwrite_default_scope('mmseg'):
        by_own_gate = evaluator.evaluate(model, rule='gate', budget=0.5)
        transferred = evaluator.evaluate(model, rule='transfer', budget=0.5, gate_file=own)
        elsewhere = evaluator.evaluate(model, rule='transfer', budget=0.5, gate_file=other)
        for key in ('mIoU', 'gmacs', 'fine_fraction', 'fine_on_detailed', 'fine_on_uniform'):
            assert transferred[key] == by_own_gate[key], key
        assert transferred['iou'] == by_own_gate['iou']
        assert elsewhere['fine_fraction'] == transferred['fine_fraction'] == 0.5
        assert (elsewhere['fine_on_detailed'], elsewhere['mIoU']) != \
            (transferred['fine_on_detailed'], transferred['mIoU'])
        assert model.backbone.gate is gate
        with pytest.raises(ValueError, match=r"mean: gate \[0.0, 0.0, 0.0\]"):
            evaluator.evaluate(model, rule='transfer', budget=0.5,
                               gate_file=gate_file(gate, 'raw', mean=[0.0] * 3))
        with pytest.raises(ValueError, match="gate_file is what rule 'transfer' substitutes"):
            evaluator.evaluate(model, rule='gate', budget=0.5, gate_file=own)
        with pytest.raises(ValueError, match="gate_file is what rule 'transfer' substitutes"):
            evaluator.evaluate(model, rule='transfer', budget=0.5)


def test_the_transfer_evidence_trains_the_classifier_first(tmp_path):
    """The zero-shot transfer evaluations of recipe_mixed_head read the classifier's gate file:
    the plan trains the classifier (once per seed) before anything that needs its gate."""
    study = load_tool('tools/analysis_tools/msvit_study.py')
    args = study.parse_args(['--setting', 'smoke', '--seeds', '0', '1', '--out-dir',
                             str(tmp_path), '--only', 'recipe_mixed_head',
                             'recipe_mixed_head_gate_transfer'])
    steps = study.Study(args).plan()
    kinds = [(kind, seed, run) for kind, seed, run, *_ in steps]
    for seed in (0, 1):
        assert kinds.count(('cls', seed, 'cls')) == 1
        first_transfer = min(i for i, step in enumerate(steps) if step[1] == seed and (
            (step[4] or {}).get('rule') == 'transfer' or step[2].endswith('_transfer')))
        assert kinds.index(('cls', seed, 'cls')) < first_transfer
    evals = {name for kind, seed, run, name, *_ in steps if run == 'recipe_mixed_head' and
             kind == 'eval'}
    assert {'transfer0.25', 'transfer0.5'} <= evals
    # without the transfer evaluations no classifier is trained
    args = study.parse_args(['--setting', 'smoke', '--seeds', '0', '--out-dir', str(tmp_path),
                             '--only', 'recipe'])
    assert not [step for step in study.Study(args).plan() if step[0] == 'cls']


def test_the_mask_head_study_builds_segmenters_mask_decoder_and_counts_it(tmp_path):
    """--set head=mask: mmseg's SegmenterMaskTransformerHead on the last tap's dense map (no
    auxiliary head); the evaluator's whole-model GMACs include what it runs."""
    from mmengine.registry import DefaultScope
    from mmseg.models.decode_heads import SegmenterMaskTransformerHead
    from mmseg.registry import MODELS

    from mmseg_msvit.analysis.macs import decode_macs, dense_decode_macs
    from mmseg_msvit.analysis.study.configs import seg_config
    from mmseg_msvit.models import ScalePolicy
    from mmseg_msvit.analysis.study.runs import SETTINGS
    costs = {}
    for head in ('linear', 'mask'):
        cfg = seg_config(dict(SETTINGS['smoke'], head=head), 'recipe', 0, str(tmp_path))
        assert cfg.model.auxiliary_head is None and cfg.model.neck.num_taps == 1
        with DefaultScope.overwrite_default_scope('mmseg'):
            model = MODELS.build(cfg.model).eval()
            costs[head] = dense_decode_macs(model, (64, 64))
            # the recipe's neck unpools coarse tokens on every region: the neck's cost
            feats = model.backbone(torch.zeros(1, 3, 64, 64), ScalePolicy.forced('fine'))
            unpool = model.neck.unpool_macs(feats[0].layout)
            assert unpool == 4 * 4 * 192 * 192  # four regions, Linear(D, 4D)
            assert costs[head] == decode_macs(model, [f.to_dense() for f in feats]) + unpool
        if head == 'mask':
            assert type(model.decode_head) is SegmenterMaskTransformerHead
            attention = [m for m in model.decode_head.modules()
                         if isinstance(m, torch.nn.MultiheadAttention)]
            assert len(attention) == 2 and attention[0].num_heads == 3  # 64 channels a head
    # two transformer layers over 16 tokens of 192 channels: at least their linear layers
    assert costs['mask'] - costs['linear'] >= 2 * 16 * 12 * 192 * 192
    with pytest.raises(ValueError, match="head must be 'upernet', 'linear' or 'mask'"):
        seg_config(dict(SETTINGS['smoke'], head='fpn'), 'recipe', 0, str(tmp_path))


def test_the_classifier_and_the_runs_that_load_its_gate_share_the_gate_kind(tmp_path):
    """cls_gate: the classifier trains the gate kind the transferred runs build (a gate file
    loads only into the same kind); other runs keep their own gates."""
    from mmseg_msvit.analysis.study.configs import cls_config, seg_config
    from mmseg_msvit.analysis.study.runs import CONTENT_PRIOR_GATE, SETTINGS
    for kind in ('mlp', 'content_prior'):
        setting = dict(SETTINGS['smoke'], cls_gate=kind)
        classifier = cls_config(setting, 0, str(tmp_path)).model.backbone.gate
        loader = seg_config(setting, 'recipe_mixed_head_gate_transfer', 0,
                            str(tmp_path)).model.backbone
        assert loader.gate_init['checkpoint'].endswith(osp.join('seed0', 'cls', 'gate.pth'))
        assert dict(loader.gate) == dict(classifier)
        assert bool(classifier.get('content_prior')) == (kind == 'content_prior')
        scratch = seg_config(setting, 'recipe_mixed_head_gate_mlp', 0, str(tmp_path))
        assert not scratch.model.backbone.gate.get('content_prior')
        assert dict(seg_config(setting, 'recipe_mixed_head_gate', 0,
                               str(tmp_path)).model.backbone.gate) == CONTENT_PRIOR_GATE
    with pytest.raises(ValueError, match="cls_gate must be one of"):
        cls_config(dict(SETTINGS['smoke'], cls_gate='cnn'), 0, str(tmp_path))
