"""Whole-model CPU latency against Hugging Face transformers' Mask2Former (benchmark only).

``PYTHONPATH=/tmp/hf python -m benchmarks.model_vs_hf`` after
``pip install --target /tmp/hf --no-deps transformers huggingface_hub tokenizers safetensors``:
transformers is not a dependency of ecom2f. Both models are R50 COCO-panoptic sized
(256 channels, 6 encoder layers, 9 decoder layers, 100 queries, 133 classes) with random
weights; ours runs at full depth with the compiled MSDA op and with the grid_sample
reference (transformers always uses its own grid_sample path on CPU).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.model_depths import _model, bench_msda_paths, time_cases

__all__ = ["main"]


def _hf_model():
    try:
        from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
    except ImportError as error:  # pragma: no cover - depends on the benchmark-only install
        raise SystemExit(f"transformers is needed for this benchmark only ({error}); see this module's docstring") from error
    backbone = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=133, use_pretrained_backbone=False)
    torch.manual_seed(0)
    return Mask2FormerForUniversalSegmentation(config).eval()


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    ours, theirs = _model("resnet50"), _hf_model()
    pixels = torch.randn(1, 3, args.size, args.size)
    timed = time_cases(
        {"ours": lambda: ours.forward_raw(pixels), "transformers": lambda: theirs(pixel_values=pixels)}, args.runs
    )
    timed.update({f"ours, {k}": v for k, v in bench_msda_paths(ours, args.size, args.runs).items()})
    base_wall, base_cpu = timed["ours"]
    print(f"R50 Mask2Former, 1 image {args.size}x{args.size}, {torch.get_num_threads()} threads, median of {args.runs}")
    print("| model | wall s | CPU s |\n|---|---|---|")
    for name, (wall, cpu) in timed.items():
        print(f"| {name} | {wall:.2f} ({wall / base_wall:.2f}x) | {cpu:.2f} ({cpu / base_cpu:.2f}x) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
