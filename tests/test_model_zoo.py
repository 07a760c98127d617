"""The model zoo (configs/*/metafile.yaml, model-index.yml) lists every long-named config, and
tools/model_converters/vit2msvit.py writes a file MSViT loads with the source's features."""
import glob
import os.path as osp
import re

import pytest
import torch
import yaml
from _helpers import REPO, load_tool
from test_adoption import DEPTH, HEADS, SIZE, WIDTH, randomise

from mmseg_msvit.models import MSViT

FOLDERS = ('configs/msvit', 'configs/msvit_cls')
#: mmseg-style long names: <backbone>_[<decoder>_]<gpus>xb<batch>-<schedule>_<data>[-<size>]
LONG_NAME = re.compile(r'^[a-z]+-[a-z]+\d+-[\w-]+?_(?:[\w-]+_)?(\d+)xb(\d+)-[\w-]+_[\w-]+$')
STATUS = 'Status'


def long_named_configs(folder):
    stems = [osp.splitext(osp.basename(p))[0] for p in glob.glob(osp.join(REPO, folder, '*.py'))]
    return sorted(s for s in stems if LONG_NAME.match(s))


def metafile(folder):
    with open(osp.join(REPO, folder, 'metafile.yaml'), encoding='utf-8') as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize('folder', FOLDERS)
def test_every_long_named_config_has_one_metafile_entry(folder):
    models = metafile(folder)['Models']
    names = [m['Name'] for m in models]
    configs = long_named_configs(folder)
    assert configs, folder
    assert sorted(names) == configs  # exactly one entry each, and no other
    for model in models:
        assert model['Config'] == f"{folder}/{model['Name']}.py"
        assert osp.isfile(osp.join(REPO, model['Config']))
        assert model['In Collection'] == 'MSViT'
        gpus, batch = map(int, LONG_NAME.match(model['Name']).groups())
        meta = model['Metadata']
        assert meta['Batch Size'] == gpus * batch, model['Name']
        assert meta['Training Resources'].startswith(f'{gpus}x '), model['Name']
        assert meta['Architecture'] and meta['Training Data'] == model['Results']['Dataset']
        assert model['Results']['Task'] == ('Semantic Segmentation' if folder == FOLDERS[0]
                                            else 'Image Classification')
        metrics = model['Results']['Metrics']
        assert metrics and all(v is None or isinstance(v, (int, float)) for v in metrics.values())
        assert 'Weights' in model
        if all(v is None for v in metrics.values()) or model['Weights'] is None:
            assert model.get(STATUS), model['Name']
            expected = ('measured by make demo' if 'synthetic' in model['Name'] else 'not run')
            assert model[STATUS].startswith(expected), model['Name']


def test_the_collection_and_the_model_index():
    collections = metafile(FOLDERS[0])['Collections']
    assert [c['Name'] for c in collections] == ['MSViT']
    assert collections[0]['Paper']['URL'] == 'https://arxiv.org/abs/2307.02321'
    assert osp.isfile(osp.join(REPO, collections[0]['Code']))
    with open(osp.join(REPO, 'model-index.yml'), encoding='utf-8') as f:
        index = yaml.safe_load(f)
    assert index['Import'] == [f'{folder}/metafile.yaml' for folder in FOLDERS]


# ----------------------------------------------------------------------------- the converter
@pytest.fixture(scope='module')
def tool():
    return load_tool('tools/model_converters/vit2msvit.py')


def mmseg_vit():
    from mmseg.models.backbones import VisionTransformer
    return randomise(VisionTransformer(
        img_size=(SIZE, SIZE), patch_size=16, embed_dims=WIDTH, num_layers=DEPTH,
        num_heads=HEADS, out_indices=DEPTH - 1, final_norm=False, patch_bias=False,
        with_cls_token=True, output_cls_token=False, norm_cfg=dict(type='LN', eps=1e-6)))


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_converted_mmseg_segmentor_checkpoint_reproduces_its_features(tool, tmp_path, capsys,
                                                                      suffix):
    torch.manual_seed(0)  # random weights: the same draw whatever ran before
    vit = mmseg_vit()
    src, dst = str(tmp_path / 'segmentor.pth'), str(tmp_path / f'vit_s{suffix}')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in vit.state_dict().items()},
                'meta': {}}, src)
    tool.main([src, dst])
    printed = capsys.readouterr().out
    assert 'mmseg key names' in printed and f'embed width {WIDTH}, depth {DEPTH}' in printed
    assert 'bias added as zeros' in printed
    model = MSViT(arch=dict(embed_dims=WIDTH, depth=DEPTH, num_heads=HEADS), img_size=SIZE,
                  force_scale='fine', final_norm=False, norm_eps=1e-6, patch_bias=True,
                  init_cfg=dict(type='Pretrained', checkpoint=dst))
    model.init_weights()
    model.eval()
    img = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours, theirs = model(img)[-1].to_dense(), vit(img)[-1]
    # LayerNorm'ed features of unit scale; a patch embedding as a matrix product (ours) and as a
    # convolution (mmseg's) round differently: up to 1.6e-5 on some random draws
    torch.testing.assert_close(ours, theirs, atol=5e-5, rtol=1e-4)


def test_refusals(tool, tmp_path):
    src, dst = str(tmp_path / 'vit.pth'), str(tmp_path / 'out.pth')
    torch.save(mmseg_vit().state_dict(), src)
    with pytest.raises(FileExistsError, match='is the source checkpoint'):
        tool.main([src, src, '--force'])
    tool.main([src, dst])
    with open(dst, 'wb') as f:
        f.write(b'older file')
    with pytest.raises(FileExistsError, match='exists; pass --force'):
        tool.main([src, dst])
    assert open(dst, 'rb').read() == b'older file'  # untouched
    tool.main([src, dst, '--force'])
    assert 'patch_embed.proj.bias' in torch.load(dst, weights_only=True)
    with pytest.raises(IsADirectoryError, match='is a directory'):
        tool.main([src, str(tmp_path)])
    import os
    import stat
    with pytest.raises(FileExistsError, match='not a regular file'):
        tool.main([src, '/dev/null', '--force'])
    assert stat.S_ISCHR(os.stat('/dev/null').st_mode)  # still the device
    fifo = str(tmp_path / 'pipe')
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match='not a regular file'):
        tool.main([src, fifo, '--force'])
    not_vit = str(tmp_path / 'head.pth')
    torch.save({'decode_head.conv_seg.weight': torch.zeros(1)}, not_vit)
    with pytest.raises(KeyError, match='no ViT patch embedding'):
        tool.main([not_vit, str(tmp_path / 'x.pth')])
