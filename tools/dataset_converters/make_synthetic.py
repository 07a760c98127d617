"""Write a deterministic synthetic dataset in the ADE20K, Cityscapes or ImageNet folder layout.

Examples::

    python tools/dataset_converters/make_synthetic.py data/synthetic_ade --layout ade20k
    python tools/dataset_converters/make_synthetic.py data/synthetic_cityscapes \
        --layout cityscapes --img-size 256 512
    python tools/dataset_converters/make_synthetic.py data/synthetic_imagenet \
        --layout imagenet --num-train 40 --num-val 10 --img-size 96 96
"""
import sys
import time

from mmseg_msvit.cli import tool_parser
from mmseg_msvit.datasets.synthetic import LAYOUTS, SCENE_STYLES, make_synthetic


def parse_args(argv=None):
    parser = tool_parser(__doc__)
    parser.add_argument('out_dir', help='root folder of the dataset')
    parser.add_argument('--layout', default='ade20k', help=f'one of {LAYOUTS}')
    parser.add_argument('--num-train', type=int, default=64,
                        help='training images (imagenet: per class)')
    parser.add_argument('--num-val', type=int, default=16,
                        help='validation images (imagenet: per class)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(256, 256),
                        metavar=('H', 'W'), help='image height and width')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--style', default='standard', choices=sorted(SCENE_STYLES),
                        help='scenes as the project draws them (standard) or drawn differently '
                        '(shifted: other palette, gravel floors, diagonal stripes, tilted poles)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    try:
        counts = make_synthetic(args.out_dir, layout=args.layout, num_train=args.num_train,
                                num_val=args.num_val, img_size=tuple(args.img_size),
                                seed=args.seed, style=args.style)
    except (ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {args.layout} layout to {args.out_dir}: '
          + ', '.join(f'{k}={v}' for k, v in counts.items())
          + f' images in {time.time() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
