"""Every key and shape of the full Mask2Former R50 / Swin-T COCO panoptic models maps onto ours."""

from __future__ import annotations

import json

import pytest
import torch

from ecom2f.modeling import ModelConfig, build_model
from ecom2f.modeling.mask2former_checkpoint import export_mask2former, load_into

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def swin_relative_position_index(window: int) -> torch.Tensor:
    """Swin's window index, written from the paper's definition (independent of timm)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


@pytest.mark.parametrize(
    "file_name, backbone",
    [("mask2former_r50_coco_panoptic.params.json", "resnet50"), ("mask2former_swint_coco_panoptic.params.json", "swin_t")],
)
def test_full_model_keys_map_with_nothing_left_over(shared_dir, file_name, backbone):
    path = shared_dir / "reference" / "mask2former" / file_name
    if not path.is_file():
        pytest.skip(f"{path} not found; this test needs the Mask2Former reference data")
    listing = json.loads(path.read_text())
    state = {}
    for key, shape, dtype, _kind in listing["state_dict"]:
        if key.endswith("relative_position_index"):
            state[key] = swin_relative_position_index(int(round(shape[0] ** 0.5)))
        else:
            state[key] = torch.zeros(shape, dtype=_DTYPES[dtype])
    model = build_model(ModelConfig(backbone={"name": backbone}))
    left = load_into(model, state)
    assert left == ["gate.head.bias", "gate.head.weight"]  # Mask2Former has no gate
    # Everything we hold came from the zero state dict (the gate aside).
    for key, value in model.state_dict().items():
        if not key.startswith("gate.") and value.is_floating_point():
            assert value.abs().sum() == 0, key
    ours = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("gate."))
    assert ours == listing["total_parameter_count"]
    # And back: the export has exactly Mask2Former's keys (plus the gate) and shapes.
    exported = export_mask2former(model, include_gate=False)
    assert {key: list(value.shape) for key, value in exported.items()} == {
        key: shape for key, shape, _dtype, _kind in listing["state_dict"]
    }
