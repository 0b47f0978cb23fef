"""``ecom2f data synth`` and ``ecom2f data check``."""

from __future__ import annotations

import argparse
import os

from ecom2f.errors import BadInputError

FORMATS = ("coco_panoptic", "coco_instances", "semantic")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``data`` and its actions ``synth`` and ``check``."""
    data = subparsers.add_parser("data", help="generate synthetic data, check datasets")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    synth = commands.add_parser(
        "synth", help="write a synthetic COCO-panoptic dataset of graded difficulty",
        description="Writes OUT_DIR/{images/, panoptic/, panoptic.json}. OUT_DIR must be empty or new, unless "
                    "--overwrite, which replaces it once the new set is complete.",
    )
    synth.add_argument("out_dir", metavar="OUT_DIR", help="output folder (images/, panoptic/, panoptic.json)")
    synth.add_argument("--num-images", type=int, default=200, metavar="N", help="how many images")
    synth.add_argument("--image-size", type=int, default=160, metavar="PX", help="square side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same files)")
    synth.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it already holds files")
    synth.set_defaults(func=run_data_synth)

    check = commands.add_parser(
        "check", help="read every sample of a dataset and list its problems (exit 1 on any error)",
        description="ROOT is a registered dataset name (then --format is not needed) or a folder. A folder laid "
                    "out as a registered dataset (detectron2's coco/, cityscapes/, ADEChallengeData2016/, the "
                    "synthetic root) is recognised, whatever it is called, and each of its splits is checked; "
                    "otherwise the folder holds one dataset, found from the defaults below.",
    )
    check.add_argument("root", metavar="ROOT",
                       help="dataset folder (e.g. datasets/coco), or a registered dataset name (coco_2017_val_panoptic)")
    check.add_argument("--format", choices=FORMATS, help="the folder's format (needed for a folder)")
    check.add_argument("--split", help="check only the recognised splits whose name contains this (e.g. val)")
    check.add_argument("--json", help="annotation JSON (default: the one *.json in ROOT)")
    check.add_argument("--image-root", help="image folder (default: ROOT/images or ROOT/<split>)")
    check.add_argument("--png-root", help="panoptic PNG folder (default: ROOT/<json stem>)")
    check.add_argument("--label-root", help="semantic label folder (default: ROOT/labels or ROOT/annotations)")
    check.add_argument("--classes", help="semantic: number of classes or comma-separated names")
    check.add_argument("--ignore-value", type=int, default=255, help="semantic: the label value that is ignored")
    check.set_defaults(func=run_data_check)

    data.set_defaults(func=lambda args: data.print_help() or 2)


def run_data_synth(args: argparse.Namespace) -> int:
    """Writes the synthetic dataset and says how long it took.

    A folder that already holds files is refused (a smaller set written over a larger one would
    leave the old images beside the new JSON); ``--overwrite`` generates into a sibling folder and
    swaps it in at the end, so the old set stays whole if generation fails.
    """
    import shutil
    import time

    from ecom2f.data.synthetic import generate

    out = args.out_dir.rstrip("/") or args.out_dir
    if os.path.isfile(out):
        raise BadInputError(f"{out} is a file; give a folder for the synthetic dataset")
    existing = os.listdir(out) if os.path.isdir(out) else []
    if existing and not args.overwrite:
        raise BadInputError(f"{out} is not empty ({len(existing)} entries, e.g. {min(existing)}): choose an "
                            "empty or new folder, or pass --overwrite to replace it")
    start = time.perf_counter()
    if not existing:
        path = generate(out, args.num_images, args.image_size, args.seed)
    else:
        staging, retired = f"{out}.writing-{os.getpid()}", f"{out}.old-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            generate(staging, args.num_images, args.image_size, args.seed)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.replace(out, retired)
        os.replace(staging, out)
        shutil.rmtree(retired, ignore_errors=True)
        path = os.path.join(out, "panoptic.json")
    print(f"wrote {args.num_images} images and {path} in {time.perf_counter() - start:.1f} s")
    return 0


def run_data_check(args: argparse.Namespace) -> int:
    """Prints each dataset's problems; exit status 1 if there is any error among them."""
    from ecom2f.data.check import check_dataset

    datasets = _datasets_to_check(args)
    if len(datasets) > 1:
        print(f"{args.root}: {len(datasets)} datasets in a registered layout: {', '.join(datasets)}")
    ok = True
    for dataset in datasets.values():
        report = check_dataset(dataset)
        print(report.format())
        ok = ok and report.ok
    return 0 if ok else 1


def _datasets_to_check(args: argparse.Namespace) -> dict[str, str | dict]:
    """``{label: registered name or spec}`` of what ``args`` names."""
    from ecom2f.data.check import specs_from_root
    from ecom2f.data.registry import registered_datasets, unknown_dataset_message

    if args.format is None:
        if args.root in registered_datasets():
            return {args.root: args.root}
        if os.path.isdir(args.root) or "://" in args.root:
            raise BadInputError(f"{args.root} is a folder: pass its --format ({', '.join(FORMATS)})")
        raise BadInputError(f"{unknown_dataset_message(args.root)} ({args.root} is no folder either)")
    classes = args.classes
    if classes is not None:
        classes = int(classes) if classes.isdigit() else [name.strip() for name in classes.split(",")]
    return specs_from_root(args.root, args.format, args.json, args.image_root, args.png_root, args.label_root,
                           classes, args.ignore_value, args.split)
