"""``ecom2f pq``: COCO panoptic quality of a prediction folder, as panopticapi computes it."""

from __future__ import annotations

import argparse
import json


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``pq``."""
    parser = subparsers.add_parser(
        "pq", help="panoptic quality of COCO-format predictions (JSON + PNG folder) against COCO panoptic ground truth"
    )
    parser.add_argument("--gt-json", required=True, help="COCO panoptic ground-truth JSON")
    parser.add_argument("--pred-json", required=True, help="predictions in COCO panoptic JSON format")
    parser.add_argument("--gt-folder", default=None, help="ground-truth PNGs (default: --gt-json without .json)")
    parser.add_argument("--pred-folder", default=None, help="predicted PNGs (default: --pred-json without .json)")
    parser.add_argument("--output", default=None, help="also write the full summary (with per-class values) as JSON")
    parser.set_defaults(func=run_pq)


def run_pq(args: argparse.Namespace) -> int:
    """Prints the PQ/SQ/RQ table; with ``--output``, writes the summary JSON atomically."""
    from pathlib import Path

    from ecom2f.evaluation.coco_panoptic_files import format_pq_table, pq_compute_files

    summary = pq_compute_files(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder)
    print(format_pq_table(summary))
    if args.output:
        target = Path(args.output)
        temporary = target.with_name(target.name + ".tmp")
        serialisable = {**summary, "per_class": {str(k): v for k, v in summary["per_class"].items()}}
        temporary.write_text(json.dumps(serialisable, indent=2))
        temporary.replace(target)
    return 0
