"""Tool options an mmseg user reaches for: get_flops --shape without a dataset, --tta counting
every view, --amp on a CPU."""
import os.path as osp

import pytest
import torch
from _helpers import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'configs', 'msvit', 'demo_msvit_synthetic.py')


def test_get_flops_shape_needs_no_dataset_and_says_what_mmengine_misses(capsys, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ folder here
    tool = load_tool('tools/analysis_tools/get_flops.py')
    result = tool.main([DEMO, '--shape', '128', '--cfg-options', 'model.backbone.fine_budget=0.5'])
    out = capsys.readouterr().out
    rows = result['backbone']
    dense, coarse = rows['all fine (dense ViT)'], rows['all coarse']
    assert coarse < rows['budget 0.5'] < dense
    # ViT-Ti/16 at 128 px: 64 tokens + CLS; our formula from the layout
    from mmseg_msvit.analysis import backbone_macs
    from mmseg_msvit.cli import build_eval_model, load_config
    model, _ = build_eval_model(load_config(DEMO, None), None, loader_names=())
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    assert dense == pytest.approx(float(backbone_macs(model.backbone, torch.zeros(1, 3, 128, 128),
                                                      mask)[0]))
    # mmengine's counter (mmseg's get_flops.py) has no SDPA handle: lower than ours
    assert result['mmengine_dense_backbone'] < dense
    assert 'scaled_dot_product_attention' in out
    params = result['params']
    assert params['total'] > params['backbone'] > params['gate'] > 0
    assert params['neck_and_heads'] > 0 and 'parameters:' in out
    with pytest.raises(SystemExit):
        tool.parse_args([DEMO, '--shape', '128', '128', '128'])
    # with mixed-scale decoding the neck and head cost follows the decisions, row by row
    mixed = tool.main([DEMO, '--shape', '128', '--cfg-options', 'model.backbone.fine_budget=0.5',
                       'model.neck.coarse_reduction=2'])['decode']
    plain = result['decode']
    assert plain['all coarse'] == plain['budget 0.5'] == plain['all fine (dense ViT)']
    assert mixed['all fine (dense ViT)'] == pytest.approx(plain['all fine (dense ViT)'])
    assert mixed['all coarse'] < mixed['budget 0.5'] < mixed['all fine (dense ViT)']
    assert 'neck + head' in capsys.readouterr().out


def test_tta_sums_the_cost_of_every_view():
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    from mmseg_msvit.models.segmentors import MSViTSegTTAModel

    def view(macs, fraction):
        sample = SegDataSample()
        sample.seg_logits = PixelData(data=torch.randn(3, 4, 4))
        sample.set_metainfo(dict(msvit_backbone_macs=macs, msvit_num_tokens=10.0,
                                 msvit_decode_macs=2 * macs, msvit_macs=3 * macs,
                                 msvit_forwards=1, msvit_fine_fraction=fraction,
                                 ori_shape=(4, 4), img_shape=(4, 4), img_path='a.jpg'))
        return sample

    tta = MSViTSegTTAModel.__new__(MSViTSegTTAModel)
    torch.nn.Module.__init__(tta)
    tta.module = type('Segmentor', (), {'out_channels': 3})()
    merged = tta.merge_preds([[view(1e9, 0.2), view(2e9, 0.4), view(3e9, 0.6)]])
    meta = merged[0].metainfo
    assert meta['msvit_backbone_macs'] == pytest.approx(6e9)  # all three views, not the last
    assert meta['msvit_decode_macs'] == pytest.approx(12e9)
    assert meta['msvit_macs'] == pytest.approx(18e9)
    assert meta['msvit_forwards'] == 3 and meta['msvit_tta_views'] == 3
    assert meta['msvit_fine_fraction'] == pytest.approx(0.4)


def test_tta_without_a_pipeline_is_explained(tmp_path, synthetic_root):
    tool = load_tool('tools/test.py')
    from mmseg_msvit.cli import load_config
    checkpoint = str(tmp_path / 'model.pth')
    torch.save({'state_dict': {'backbone.cls_token': torch.zeros(1, 1, 192)}, 'meta': {}},
               checkpoint)
    cfg = load_config(DEMO, None)
    cfg.pop('tta_pipeline')
    cfg.dump(str(tmp_path / 'dumped.py'))
    data = ['--cfg-options', f"test_dataloader.dataset.data_root={synthetic_root / 'ade'}"]
    args = tool.parse_args([str(tmp_path / 'dumped.py'), checkpoint, '--tta', *data])
    with pytest.raises(ValueError, match='tta_pipeline'):
        tool.build_cfg(args)
    # with the demo config's own pipeline the TTA model counts every view
    cfg = tool.build_cfg(tool.parse_args([DEMO, checkpoint, '--tta', *data]))
    assert cfg.model.type == 'MSViTSegTTAModel' and cfg.model.module.type == 'MSViTEncoderDecoder'


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path of --amp')
def test_amp_on_a_cpu_trains_under_bfloat16_autocast(synthetic_root, tmp_path):
    from mmseg_msvit.engine import CPUAutocastOptimWrapper
    tool = load_tool('tools/train.py')
    root = synthetic_root / 'ade'
    data = ['--cfg-options'] + [f'{loader}.dataset.data_root={root}' for loader in (
        'train_dataloader', 'val_dataloader', 'test_dataloader')]
    cfg = tool.build_cfg(tool.parse_args([DEMO, '--amp', '--work-dir', str(tmp_path), *data]))
    assert cfg.optim_wrapper.type == 'CPUAutocastOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    layer = torch.nn.Linear(8, 8)
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(layer.parameters(), lr=0.1))
    with wrapper.optim_context(layer):
        out = layer(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    with pytest.raises(ValueError, match='dtype'):
        CPUAutocastOptimWrapper(dtype='int8', optimizer=torch.optim.SGD(layer.parameters(),
                                                                       lr=0.1))
