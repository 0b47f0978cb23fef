"""``ecom2f predict``: a trained run's parent and gate over a folder, a list file, an s3:// prefix, an
image or a COCO JSON's images; COCO panoptic / instance files, semantic PNGs and a per-image table
out (:mod:`ecom2f.steps.predict.job`)."""

from __future__ import annotations

import argparse

from ecom2f.cli.run_config import add_run_config_arguments, load_run_config


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``predict``."""
    parser = subparsers.add_parser(
        "predict", help="segment a folder / list / s3:// prefix / COCO JSON of images with a run's parent and gate",
        description="Runs the run's parent (<run>/parent/model_final.pth) with the gate of one compute budget "
                    "(<run>/gates/<budget>/) on the input images and writes, under --output: panoptic.json + "
                    "panoptic/*.png (COCO panoptic, read by `ecom2f pq`), instances.json (COCO results with RLE "
                    "masks, read by pycocotools), semantic/*.png, images.parquet (per image: depth, GFLOPs, "
                    "time, problems) and, with --vis, vis/*.jpg. A rerun skips the shards already written. "
                    "Settings: the serving section (serving.max_pixels, serving.tasks, serving.predict.*).")
    add_run_config_arguments(parser)
    parser.add_argument("--input", required=True,
                        help="a folder or s3:// prefix (searched recursively), a list file (.txt: one path or URI "
                             "per line), one image, or a COCO JSON (with --image-root)")
    parser.add_argument("--output", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--image-root", help="the folder of a COCO JSON input's images")
    parser.add_argument("--categories", help="COCO category JSON of the run's classes (default: the input COCO "
                                             "JSON's, else the run's validation set's, else class_<i>)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--budget", help="the gate: a folder name under <run>/gates/ (default: serving.budget, "
                                         "else the only gate)")
    choice.add_argument("--depth", type=int, help="a fixed encoder depth instead of a gate")
    parser.add_argument("--vis", action="store_true", help="also write overlays (vis/<name>.jpg)")
    parser.add_argument("--ray", action="store_true",
                        help="run on Ray Data ($RAY_ADDRESS or ray.address, else a local cluster); s3:// inputs "
                             "above serving.predict.ray_threshold images always do")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: serving.device")
    parser.set_defaults(func=run_predict_command)


def run_predict_command(args: argparse.Namespace) -> int:
    """Runs the job; prints the output folder and the counts."""
    config = load_run_config(args)
    from ecom2f.steps.predict.job import PredictOptions, run_predict

    summary = run_predict(config, PredictOptions(
        input=args.input, output=args.output, image_root=args.image_root, categories=args.categories,
        budget=args.budget, depth=args.depth, vis=args.vis, use_ray=args.ray, device=args.device))
    problems = ", ".join(f"{count} {kind}" for kind, count in sorted(summary.problems.items()))
    print(f"predicted {summary.predicted} of {summary.images} images -> {summary.output}"
          + (f" ({summary.skipped} skipped: {problems})" if summary.skipped else "")
          + (f"; {summary.shards_skipped} shards were already written" if summary.shards_skipped else ""))
    return 0
