"""A tiny trained-looking run for the inference tests: a seeded random parent saved where step 1
puts it, and two gates written as step 3 writes them, crafted so that the test images choose
different depths (a gate that always chose one depth would hide grouping bugs)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecom2f import storage
from ecom2f.config.model import GateConfig
from ecom2f.modeling import build_model
from ecom2f.modeling.gate import Gate
from ecom2f.steps.gate.store import write_gate
from tests.steps.conftest import tiny_config, tiny_data_root  # noqa: F401  (the synthetic data, shared)

# Low thresholds so that a random parent still predicts segments and instances.
RUN_OVERRIDES = ("model.test.object_mask_threshold=0.05", "model.test.overlap_threshold=0.5",
                 "model.test.detections_per_image=10", "serving.predict.shard_size=3",
                 "serving.predict.batch_size=4")
BUDGETS = {"layers_3": 3.0, "layers_5": 5.0}
# The depth each budget's gate chooses for each of sample_images() (mean 3 and 5 layers).
PLANTED = {"layers_3": [2, 3, 4, 2, 3, 4, 3], "layers_5": [4, 5, 6, 6, 5, 4, 5]}


def random_parent(config):
    """A seeded random parent whose deformable offsets are non-zero (the default init leaves them zero)."""
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    with torch.no_grad():
        for layer in model.pixel_decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.1)
            layer.self_attn.attention_weights.weight.normal_(0, 0.1)
    return model


def gate_features(model, config, images: list[np.ndarray]) -> torch.Tensor:
    """``[N, F]`` pooled gate features of each image alone, at the run's test size (as Predictor sees it)."""
    from ecom2f.data.transforms import inference_resize
    from ecom2f.modeling.preprocessing import normalize_and_pad

    resize = inference_resize(config.data.test_min_size, config.data.test_max_size)
    rows = []
    with torch.no_grad():
        for image in images:
            resized = resize({"image": torch.from_numpy(image).permute(2, 0, 1)})["image"]
            pixels, sizes = normalize_and_pad([resized], config.model.pixel_mean, config.model.pixel_std,
                                              config.model.size_divisibility)
            rows.append(model.forward_trunk(pixels, sizes).gate_features)
    return torch.cat(rows)


def planted_gate(config, features: torch.Tensor, exits: list[int]) -> Gate:
    """A gate whose head maps each row of ``features`` to the given exit (least squares on one-hot
    targets; exact while images are fewer than features)."""
    gate = Gate(config.model.pixel_decoder.conv_dim, GateConfig(**config.model.gate.model_dump())).eval()
    choices = config.model.gate.exits
    targets = torch.full((len(exits), len(choices)), -10.0, dtype=torch.float64)
    for row, depth in enumerate(exits):
        targets[row, choices.index(depth)] = 10.0
    inputs = torch.cat([features.double(), torch.ones(len(exits), 1, dtype=torch.float64)], 1)
    solution = torch.linalg.pinv(inputs) @ targets  # [F + 1, E]
    with torch.no_grad():
        gate.head.weight.copy_(solution[:-1].T.float())
        gate.head.bias.copy_(solution[-1].float())
    return gate


def make_run(data_root: Path, storage_root, *overrides: str):
    config = tiny_config(data_root, storage_root, *RUN_OVERRIDES, *overrides)
    layout = config.storage.layout()
    buffer = io.BytesIO()
    torch.save(random_parent(config).state_dict(), buffer)
    storage.write_bytes(layout.parent_weights, buffer.getvalue())
    features = gate_features(random_parent(config), config, sample_images())
    for name, exits in PLANTED.items():
        gate = planted_gate(config, features, exits)
        write_gate(layout.gate(name), gate, {"channels": config.model.pixel_decoder.conv_dim, "budget": BUDGETS[name],
                                             "budget_unit": "layers"})
    return config


@pytest.fixture(scope="session")
def tiny_run(tiny_data_root, tmp_path_factory):  # noqa: F811
    return make_run(tiny_data_root, tmp_path_factory.mktemp("runs"))


def sample_images(seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 images of several sizes and aspect ratios, with smooth structure (blobs) so the gate
    features differ between them."""
    generator = np.random.default_rng(seed)
    images = []
    for height, width in [(64, 64), (48, 80), (80, 48), (64, 64), (40, 90), (72, 72), (64, 64)]:
        y, x = np.mgrid[0:height, 0:width]
        image = np.zeros((height, width, 3), dtype=np.float64)
        for _ in range(4):
            cy, cx, radius = generator.uniform(0, height), generator.uniform(0, width), generator.uniform(6, 24)
            blob = ((y - cy) ** 2 + (x - cx) ** 2) < radius**2
            image[blob] = generator.uniform(0, 255, 3)
        image += generator.normal(0, 12, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def write_image_folder(folder: Path, images: list[np.ndarray]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"img_{index:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
