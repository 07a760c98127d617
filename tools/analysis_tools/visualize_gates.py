"""Draw where a mixed-scale model puts fine and coarse tokens: on validation images, or on your own.

    python tools/analysis_tools/visualize_gates.py CONFIG CHECKPOINT --out-dir DIR
        [--images FILE_OR_FOLDER] [--num-images 8]
        [--fine-budget F | --threshold T | --content-gate BUDGET]
        [--cfg-options ...]

Each PNG shows the image with fine regions tinted (every 16x16 token outlined) and coarse regions
outlined as one 32x32 token, a legend, and in its title the image's fine fraction and backbone
GMACs; beside it the prediction and, when there is one, the ground truth. An overview PNG puts
them together.

* Without ``--images``: the config's test set (labels read). Over the whole set (or the first
  ``--num-eval`` images) it also prints where the fine tokens went: the fine fraction on
  *detailed* regions (the ground truth holds two or more classes: an object boundary or a small
  object) against *uniform* ones (``mmseg_msvit.analysis.gate_alignment``).
* With ``--images``: an image file or a folder of them (jpg, png, bmp, tif, webp), no labels
  needed; each goes through the config's test pipeline as ``mmseg.apis.inference_model`` does.

``--fine-budget`` sets the share of regions kept fine (budget mode); ``--threshold`` the gate's
threshold (threshold mode only); ``--content-gate B`` decides with the training-free content gate
at budget B, as ``tools/test.py --content-gate`` (the way to look at a dense checkpoint: its
config forces every region fine, so ``--fine-budget`` there is refused).
"""
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from PIL import Image  # noqa: E402

import mmseg_msvit  # noqa: E402,F401
from mmseg_msvit.analysis.gate_alignment import (DetailAlignment,  # noqa: E402
                                                  region_detail_kinds)
from mmseg_msvit.apis import with_content_gate  # noqa: E402
from mmseg_msvit.cli import (IMAGE_SUFFIXES, build_eval_model, load_config,  # noqa: E402
                             number_in, tool_parser)
from mmseg_msvit.visualization import (draw_gate_map, present_classes,  # noqa: E402
                                       tint_colours)



def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', required=True, help='folder for the pictures')
    parser.add_argument('--images', default=None,
                        help='an image file or a folder of images (no labels needed); default: '
                        'the config\'s test set')
    parser.add_argument('--num-images', type=int, default=8, help='pictures to draw')
    parser.add_argument('--num-eval', type=int, default=None,
                        help='test-set images for the detail statistics (default: all)')
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument('--fine-budget', type=number_in(0, 1, low_open=True), default=None,
                       help='share of regions kept fine in every image (budget mode)')
    modes.add_argument('--threshold', type=number_in(0, 1), default=None,
                       help='gate threshold in [0, 1] (threshold mode; default: the config\'s)')
    modes.add_argument('--content-gate', type=number_in(0, 1, low_open=True), default=None,
                       metavar='BUDGET',
                       help='decide with the training-free content gate, keeping this share of '
                       'regions fine (any checkpoint, a dense one too; as tools/test.py)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.backbone.fine_budget=0.5')
    return parser.parse_args(argv)


def colourise(label: np.ndarray, palette) -> np.ndarray:
    palette = np.asarray(list(palette) + [[0, 0, 0]] * 256, np.uint8)[:256]
    palette[255] = 0
    return palette[label.astype(np.int64)]


def image_files(path: str) -> list:
    """The image files of ``path`` (a file, or a folder searched non-recursively), each checked
    to be a readable, non-empty image (one line naming the file otherwise)."""
    from mmseg_msvit.datasets.checked import check_sample_files
    if osp.isfile(path):
        files = [path]
    elif not osp.isdir(path):
        raise FileNotFoundError(f'--images {path!r}: no such file or folder')
    else:
        files = sorted(osp.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f'--images {path!r}: no image files ({", ".join(IMAGE_SUFFIXES)}) '
                                'in this folder')
    for file in files:
        try:
            check_sample_files(file)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f'--images: {err}') from None
    return files


def pipeline_image(path: str, cfg) -> np.ndarray:
    """``path`` as the model's test pipeline loads it (its ``LoadImageFromFile`` decoder and
    colour type: a 16-bit PNG is scaled to 8 bits by cv2, where PIL would clip it), RGB."""
    import mmcv
    load = next((dict(step) for step in cfg.test_dataloader.dataset.pipeline
                 if step.get('type') == 'LoadImageFromFile'), {})
    image = mmcv.imread(path, flag=load.get('color_type', 'color'), channel_order='rgb',
                        backend=load.get('imdecode_backend', 'cv2'))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:  # an unchanged-depth decoder: to 8 bits for drawing
        image = (image.astype(np.float64) / max(float(image.max()), 1.0) * 255).astype(np.uint8)
    return image


def resized(label: np.ndarray, size) -> np.ndarray:
    height, width = size
    return np.asarray(Image.fromarray(label.astype(np.uint8)).resize((width, height),
                                                                      Image.NEAREST))


def draw_panel(path, title, overlay, pieces, fine_colour, coarse_colour):
    """Save the overlay (with its legend) and the label pictures side by side, titled; a piece
    is (title, picture) or (title, picture, [(class name, RGB colour), ...]) for a class legend
    under it."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    panels = [('fine (16 px) / coarse (32 px) tokens', overlay)] + list(pieces)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.4))
    for ax, (name, picture, *legend) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture)
        ax.set_title(name, fontsize=8)
        ax.axis('off')
        if legend and legend[0]:
            ax.legend(handles=[Patch(facecolor=np.asarray(colour) / 255, label=label)
                               for label, colour in legend[0]],
                      loc='upper center', bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=6,
                      frameon=False)
    np.atleast_1d(axes)[0].legend(
        handles=[Patch(facecolor=np.asarray(fine_colour) / 255, label='fine: 4 tokens'),
                 Patch(facecolor=np.asarray(coarse_colour) / 255, label='coarse: 1 token')],
        loc='upper center', bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return np.asarray(Image.open(path).convert('RGB'))


def title_of(name, sample, fine_mask) -> str:
    macs = sample.metainfo.get('msvit_backbone_macs')
    gmacs = f', {macs / 1e9:.3f} backbone GMACs' if macs is not None else ''
    return f'{name}: fine fraction {float(np.mean(fine_mask)):.2f}{gmacs}'


def test_set_pictures(args, model, cfg, model_loader):
    """Pictures and detail statistics on the config's test set."""
    palette = model_loader.dataset.metainfo.get('palette') or []
    classes = model_loader.dataset.metainfo.get('classes') or []
    fine_colour, coarse_colour = tint_colours(palette)
    ignore_index = getattr(model_loader.dataset, 'ignore_index', 255)
    alignment, fractions, panels = DetailAlignment(), [], []
    num_eval = args.num_eval or len(model_loader.dataset)
    for index, batch in enumerate(model_loader):
        if index >= max(args.num_images, num_eval):
            break
        with torch.no_grad():
            (result, ) = model.test_step(batch)  # whole or slide, as the config says
            # the gate reads each region alone: its map on the whole image is the decision of
            # every window that contains the region on the same 32 px grid
            inputs = model.data_preprocessor(batch, False)['inputs']
            padded, _ = model.backbone.pad_input(inputs)
            fine_mask = model.backbone.decide_scales(padded).fine_mask[0].cpu().numpy()
        image = batch['inputs'][0].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB
        height, width = image.shape[:2]
        pred = resized(result.pred_sem_seg.data[0].cpu().numpy(), (height, width))
        gt = resized(result.gt_sem_seg.data[0].cpu().numpy(), (height, width)) \
            if 'gt_sem_seg' in result else None
        fractions.append(float(fine_mask.mean()))
        if index < num_eval and gt is not None:
            kinds = region_detail_kinds(gt, model.backbone.coarse_patch_size, ignore_index)
            alignment.update(fine_mask[:kinds.shape[0], :kinds.shape[1]], kinds)
        if index >= args.num_images:
            continue
        name = osp.splitext(osp.basename(result.img_path))[0]
        overlay = draw_gate_map(image, fine_mask, model.backbone.coarse_patch_size,
                                model.backbone.fine_patch_size, fine_colour, coarse_colour)
        pieces = [('prediction', colourise(pred, palette),
                   present_classes(pred, classes, palette))]
        if gt is not None:
            pieces.append(('ground truth', colourise(gt, palette),
                           present_classes(gt, classes, palette)))
        panels.append(draw_panel(osp.join(args.out_dir, f'{name}_gate.png'),
                                 title_of(name, result, fine_mask), overlay, pieces,
                                 fine_colour, coarse_colour))
    return panels, fractions, alignment


def dataset_classes_and_palette(cfg, model) -> tuple:
    """Class names and palette: the checkpoint's ``dataset_meta`` when it has them, else the
    config's test dataset class (no dataset is read)."""
    from mmseg.registry import DATASETS
    meta = dict(getattr(model, 'dataset_meta', None) or {})
    if not meta.get('palette'):
        dataset_cfg = cfg.test_dataloader.dataset
        meta = dict(getattr(DATASETS.get(dataset_cfg.type), 'METAINFO', {}) or {})
        meta.update(dataset_cfg.get('metainfo') or {})
    return list(meta.get('classes') or []), list(meta.get('palette') or [])


def own_image_pictures(args, model, cfg, loader=None):
    """Pictures of image files without labels, through the test pipeline (as
    ``mmseg.apis.inference_model``)."""
    from mmseg.apis import inference_model
    model.cfg = cfg
    classes, palette = dataset_classes_and_palette(cfg, model)
    fine_colour, coarse_colour = tint_colours(palette)
    panels, fractions = [], []
    for path in image_files(args.images)[:args.num_images]:
        with torch.no_grad():
            result = inference_model(model, path)
        if 'msvit_fine_mask' not in result:
            raise ValueError('visualize_gates --images needs whole-image inference '
                             "(test_cfg.mode='whole'): in slide mode an image has one map per "
                             'window; add --cfg-options model.test_cfg.mode=whole')
        fine_mask = result.msvit_fine_mask.numpy()
        height, width = result.img_shape
        image = np.asarray(Image.fromarray(pipeline_image(path, cfg)).resize((width, height),
                                                                             Image.BILINEAR))
        pred = resized(result.pred_sem_seg.data[0].cpu().numpy(), (height, width))
        overlay = draw_gate_map(image, fine_mask, model.backbone.coarse_patch_size,
                                model.backbone.fine_patch_size, fine_colour, coarse_colour)
        name = osp.splitext(osp.basename(path))[0]
        fractions.append(float(fine_mask.mean()))
        panels.append(draw_panel(osp.join(args.out_dir, f'{name}_gate.png'),
                                 title_of(name, result, fine_mask), overlay,
                                 [('prediction', colourise(pred, palette),
                                   present_classes(pred, classes, palette))],
                                 fine_colour, coarse_colour))
    return panels, fractions, None


def main(argv=None):
    args = parse_args(argv)
    if args.num_images < 1:
        raise ValueError(f'--num-images must be >= 1, got {args.num_images}')
    if args.num_eval is not None and args.num_eval < 1:
        raise ValueError(f'--num-eval must be >= 1, got {args.num_eval}')
    if args.images is not None:
        image_files(args.images)  # a wrong path is refused before the model is built
    if osp.exists(args.out_dir) and not osp.isdir(args.out_dir):
        raise ValueError(f'--out-dir {args.out_dir!r} is an existing file, not a folder; give a '
                         'folder for the pictures')
    cfg = load_config(args.config, args.cfg_options)
    forced = cfg.model.backbone.get('force_scale')
    if forced is not None and (args.fine_budget is not None or args.threshold is not None):
        option = '--fine-budget' if args.fine_budget is not None else '--threshold'
        raise ValueError(f"{option} has no effect: the config forces every region "
                         f"{forced} (model.backbone.force_scale={forced!r}, a dense or coarse "
                         f'baseline); use --content-gate {args.fine_budget or 0.42:g} for the '
                         'training-free content gate on this checkpoint')
    if args.content_gate is not None:
        with_content_gate(cfg, args.content_gate)
    if args.fine_budget is not None:
        cfg.model.backbone.fine_budget = args.fine_budget
    if args.threshold is not None:
        budget = cfg.model.backbone.get('fine_budget')
        if budget is not None:
            raise ValueError(f'--threshold {args.threshold:g} has no effect: the model is in '
                             f'budget mode (model.backbone.fine_budget={budget:g} keeps that '
                             'share of regions fine); drop --threshold, use --fine-budget, or '
                             'add --cfg-options model.backbone.fine_budget=None for threshold '
                             'mode')
        cfg.model.backbone.gate_threshold = args.threshold  # the model's policy, from its config
    model, loader = build_eval_model(cfg, args.checkpoint,
                                     () if args.images is not None else ('test_dataloader', ))
    os.makedirs(args.out_dir, exist_ok=True)
    pictures = own_image_pictures if args.images is not None else test_set_pictures
    panels, fractions, alignment = pictures(args, model, cfg, loader)
    if not panels:
        raise RuntimeError('visualize_gates: no image to draw')
    width = max(p.shape[1] for p in panels)
    overview = np.concatenate([np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)),
                                      constant_values=255) for p in panels], axis=0)
    overview_path = osp.join(args.out_dir, 'gates_overview.png')
    Image.fromarray(overview).save(overview_path)
    stats = {}
    if alignment is not None and alignment.counts.sum():
        stats = alignment.summary()
        print(f'[gates] {len(fractions)} images, mean fine fraction {np.mean(fractions):.3f}; '
              f'fine on detailed regions (boundaries, small objects) '
              f'{stats["fine_on_detailed"]:.3f} of {stats["detailed_regions"]}, on uniform '
              f'regions {stats["fine_on_uniform"]:.3f} of {stats["uniform_regions"]}')
    else:
        print(f'[gates] {len(fractions)} images, fine fraction per image: '
              + ', '.join(f'{f:.3f}' for f in fractions))
    print(f'[gates] {len(panels)} pictures in {args.out_dir} (overview: {overview_path})')
    return dict(overview=overview_path, fractions=fractions, **stats)


if __name__ == '__main__':
    from mmseg_msvit.cli import run_cli
    run_cli(main)
