"""``ecom2f data synth`` and ``ecom2f data check``."""

from __future__ import annotations

import argparse

from ecom2f.errors import UserError


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``data`` and its actions ``synth`` and ``check``."""
    data = subparsers.add_parser("data", help="generate synthetic data, check datasets")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    synth = commands.add_parser("synth", help="write a synthetic COCO-panoptic dataset of graded difficulty")
    synth.add_argument("out_dir", help="output folder (images/, panoptic/, panoptic.json)")
    synth.add_argument("--num-images", type=int, default=200)
    synth.add_argument("--image-size", type=int, default=160, help="square side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=run_data_synth)

    check = commands.add_parser(
        "check", help="read every sample of a dataset and list its problems (exit 1 on any error)"
    )
    check.add_argument("root", help="dataset folder, or a registered dataset name (then --format is not needed)")
    check.add_argument("--format", choices=["coco_panoptic", "coco_instances", "semantic"])
    check.add_argument("--json", help="annotation JSON (default: the one *.json in ROOT)")
    check.add_argument("--image-root", help="image folder (default: ROOT/images or ROOT/<split>)")
    check.add_argument("--png-root", help="panoptic PNG folder (default: ROOT/<json stem>)")
    check.add_argument("--label-root", help="semantic label folder (default: ROOT/labels)")
    check.add_argument("--classes", help="semantic: number of classes or comma-separated names")
    check.add_argument("--ignore-value", type=int, default=255)
    check.set_defaults(func=run_data_check)

    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_data_synth(args: argparse.Namespace) -> int:
    """Writes the synthetic dataset and says how long it took."""
    import time

    from ecom2f.data.synthetic import generate

    start = time.perf_counter()
    path = generate(args.out_dir, args.num_images, args.image_size, args.seed)
    print(f"wrote {args.num_images} images and {path} in {time.perf_counter() - start:.1f} s")
    return 0


def run_data_check(args: argparse.Namespace) -> int:
    """Prints the dataset's problems; exit status 1 if there is any error among them."""
    from ecom2f.data.check import check_dataset

    report = check_dataset(_dataset_to_check(args))
    print(report.format())
    return 0 if report.ok else 1


def _dataset_to_check(args: argparse.Namespace):
    """A registered dataset's name, or the spec of the folder ``args.root`` in ``args.format``."""
    from ecom2f.data.check import spec_from_root
    from ecom2f.data.registry import registered_datasets

    if args.format is None:
        if args.root not in registered_datasets():
            raise UserError(f"{args.root!r} is not a registered dataset name: pass --format")
        return args.root
    classes = args.classes
    if classes is not None:
        classes = int(classes) if classes.isdigit() else [name.strip() for name in classes.split(",")]
    try:
        return spec_from_root(args.root, args.format, args.json, args.image_root, args.png_root, args.label_root,
                              classes, args.ignore_value)
    except UserError:
        raise
    except ValueError as error:  # spec_from_root names the flag to pass; TODO: raise a UserError there
        raise UserError(str(error)) from None
