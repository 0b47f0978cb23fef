"""Per-image PQ speed on a synthetic COCO-like image: ``python -m benchmarks.evaluation_metrics``.

Step 2 computes one PQ per training image and exit (118k x 5 on COCO), so its cost matters.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ecom2f.evaluation.panoptic_quality import PanopticGroundTruth, pq_single


def synthetic_image(height: int, width: int, num_segments: int, seed: int = 0):
    """A Voronoi-like gt with COCO-sized RGB ids, 5% void, and a prediction shifted by 3 px."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, [height, width], size=(num_segments, 2))
    rows, cols = np.mgrid[0:height, 0:width]
    nearest = np.full((height, width), 0)
    best = np.full((height, width), np.inf)
    for k, (y, x) in enumerate(centres):
        distance = (rows - y) ** 2 + (cols - x) ** 2
        closer = distance < best
        nearest[closer], best[closer] = k, distance[closer]
    gt_ids = rng.choice(np.arange(1, 256**3), size=num_segments, replace=False)
    gt = gt_ids[nearest]
    gt[rng.random(gt.shape) < 0.05] = 0
    categories = {c: {"isthing": int(c <= 80)} for c in range(1, 134)}
    gt_segments = [
        {"id": int(i), "category_id": int(rng.integers(1, 134)), "iscrowd": int(rng.random() < 0.05)}
        for i in gt_ids
        if (gt == i).any()
    ]
    pred = np.roll(nearest + 1, 3, axis=1)
    present = np.unique(pred)
    category_of = {s["id"]: s["category_id"] for s in gt_segments}
    pred_segments = [
        {"id": int(p), "category_id": category_of.get(int(gt_ids[p - 1]), 1)} for p in present
    ]
    return pred, pred_segments, gt, gt_segments, categories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--segments", type=int, default=50)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    pred, pred_segments, gt, gt_segments, categories = synthetic_image(args.height, args.width, args.segments)

    def median_ms(function) -> float:
        function()
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return 1e3 * float(np.median(times))

    single = median_ms(lambda: pq_single(pred, pred_segments, gt, gt_segments, categories).summary(categories))
    truth = PanopticGroundTruth(gt, gt_segments, categories)
    indexed = median_ms(lambda: truth.pq(pred, pred_segments).summary(categories))
    pq = truth.pq(pred, pred_segments).summary(categories)["All"]["pq"]
    print(f"image {args.height}x{args.width}, {len(gt_segments)} gt / {len(pred_segments)} predicted segments, PQ {pq:.3f}")
    print(f"pq_single + summary:               {single:7.2f} ms (median of {args.runs})")
    print(f"PanopticGroundTruth.pq + summary:  {indexed:7.2f} ms (gt indexed once, e.g. per exit)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
