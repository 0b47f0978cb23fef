"""Augmentations keep masks, ids and boxes on the image; crops leave no empty targets."""

import numpy as np
import pytest
import torch

from ecom2f.data import build_dataset, collate_samples, restore_original_size, training_targets
from ecom2f.data.transforms import build_transform, cityscapes_train, coco_lsj, inference_resize
from tests.data.helpers import make_panoptic


def _drawn_sample(height=60, width=90):
    """A black image with a white rectangle (segment 1) and a grey disc (segment 2) on void."""
    image = torch.zeros((3, height, width), dtype=torch.uint8)
    id_map = torch.zeros((height, width), dtype=torch.int64)
    id_map[10:30, 50:80] = 1
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    id_map[(yy - 40) ** 2 + (xx - 20) ** 2 <= 12**2] = 2
    image[:, id_map == 1] = 255
    image[:, id_map == 2] = 140
    masks = torch.stack([id_map == 1, id_map == 2])
    return {
        "image": image, "masks": masks, "id_map": id_map,
        "labels": torch.tensor([3, 5]), "is_thing": torch.tensor([True, True]),
        "iscrowd": torch.tensor([False, False]), "segment_ids": torch.tensor([1, 2]),
        "segments_info": [{"id": 1, "category_id": 4}, {"id": 2, "category_id": 6}],
        "image_id": 1, "file_name": "x.jpg", "orig_size": (height, width),
    }


def _interior(mask: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood is inside the mask (interpolated edges excluded)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (radius,) * 4)
    return (torch.nn.functional.max_pool2d(1 - padded, 2 * radius + 1, stride=1)[0, 0] == 0) & mask


@pytest.mark.parametrize("recipe", ["lsj", "cityscapes"])
def test_masks_ids_and_boxes_stay_on_the_drawn_shapes(recipe):
    transform = coco_lsj(96) if recipe == "lsj" else cityscapes_train(crop_size=(48, 96), base_short_side=60)
    for seed in range(25):
        torch.manual_seed(seed)
        out = transform(_drawn_sample())
        image = out["image"].float().mean(0)
        assert out["masks"].shape[-2:] == image.shape == out["id_map"].shape
        for k, segment_id in enumerate(out["segment_ids"].tolist()):
            mask = out["masks"][k]
            assert mask.any()
            assert torch.equal(mask, out["id_map"] == segment_id)  # masks and id map moved together
            inner = _interior(mask, radius=2)  # antialiased downscaling blurs ~2 px
            if inner.any():
                level = 255.0 if segment_id == 1 else 140.0
                tolerance = 10 if recipe == "lsj" else 110  # photometric distortion changes levels
                assert (image[inner] - level).abs().max() <= tolerance
            rows, cols = torch.nonzero(mask, as_tuple=True)
            x0, y0, x1, y1 = out["boxes"][k].tolist()
            # Nearest-neighbour masks and exact box corners differ by up to the ~2x scale.
            assert x0 - 3 <= cols.min() and cols.max() + 1 <= x1 + 3
            assert y0 - 3 <= rows.min() and rows.max() + 1 <= y1 + 3
            if segment_id == 1:  # a cropped rectangle keeps a tight box (a disc need not)
                assert abs(x0 - cols.min()) <= 3 and abs(x1 - cols.max() - 1) <= 3
                assert abs(y0 - rows.min()) <= 3 and abs(y1 - rows.max() - 1) <= 3
        if recipe == "lsj":
            background = out["id_map"] == 0
            far = ~_interior(~background) | background
            # every pixel that is void and away from the shapes is black or grey padding
            values = image[_interior(background, radius=2) & far]
            assert ((values < 15) | ((values - 128).abs() < 1)).all()


def test_lsj_output_size_and_scale_range():
    sizes = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = coco_lsj(128)(_drawn_sample())
        assert out["image"].shape == (3, 128, 128) and out["image_size"] == (128, 128)
        sizes.add(int(out["masks"].sum()))
    assert len(sizes) > 5  # random scales


def test_crops_never_leave_empty_targets_and_fields_stay_in_step(tmp_path):
    make_panoptic(tmp_path, num_images=6, seed=4, size=96)
    spec = {"format": "coco_panoptic", "image_root": str(tmp_path / "images"),
            "json": str(tmp_path / "panoptic.json"), "png_root": str(tmp_path / "panoptic")}
    raw = build_dataset(spec)
    dataset = build_dataset(spec, transform=coco_lsj(64, scale_range=(1.5, 2.0)))  # crops most shapes away
    dropped = 0
    for seed in range(4):
        torch.manual_seed(seed)
        for index in range(len(dataset)):
            sample = dataset[index]
            k = len(sample["labels"])
            assert all(len(sample[key]) == k for key in ("masks", "is_thing", "iscrowd", "segment_ids", "boxes"))
            assert len(sample["segments_info"]) == k
            assert sample["masks"].flatten(1).any(1).all()
            assert training_targets(sample)["masks"].flatten(1).any(1).all()
            dropped += len(raw[index]["labels"]) - k
    assert dropped > 0


def test_test_time_resize_keeps_ground_truth_and_maps_back():
    sample = _drawn_sample(427, 640)
    out = inference_resize(800, 1333)(sample)
    assert out["image"].shape == (3, 800, 1199) and out["image_size"] == (800, 1199)
    assert out["masks"].shape == (2, 427, 640) and out["orig_size"] == (427, 640)  # GT untouched
    wide = inference_resize(800, 1333)(_drawn_sample(200, 1000))
    assert wide["image"].shape[-1] == 1333  # the long side is capped
    batch = collate_samples([out])
    assert batch["images"].shape == (1, 3, 800, 1216)
    logits = batch["images"].float()[:, :1] / 255  # a "prediction" that is the image itself
    restored = restore_original_size(logits[0, 0], tuple(batch["image_sizes"][0].tolist()), out["orig_size"])
    assert restored.shape == (427, 640)
    assert (restored[_interior(sample["id_map"] == 1)] > 0.95).all()
    assert (restored[_interior(sample["id_map"] == 0)] < 0.05).all()
    labels = restore_original_size(torch.tensor([[1, 2], [3, 4]]), (2, 2), (4, 4), mode="nearest")
    assert labels.dtype == torch.int64 and labels[3, 3] == 4 and labels[0, 0] == 1


def test_collate_pads_to_multiple_of_32_with_padding_mask():
    a, b = _drawn_sample(50, 70), _drawn_sample(64, 33)
    b["iscrowd"] = torch.tensor([True, False])
    batch = collate_samples([a, b])
    assert batch["images"].shape == (2, 3, 64, 96)
    assert batch["image_sizes"].tolist() == [[50, 70], [64, 33]]
    expected = torch.ones((2, 64, 96), dtype=torch.bool)
    expected[0, :50, :70] = False
    expected[1, :64, :33] = False
    assert torch.equal(batch["padding_mask"], expected)
    assert torch.equal(batch["images"][0, :, :50, :70], a["image"]) and batch["images"][0, :, 50:].eq(0).all()
    assert batch["targets"][0]["masks"].shape == (2, 64, 96)
    assert torch.equal(batch["targets"][0]["masks"][:, :50, :70], a["masks"])
    assert batch["targets"][1]["labels"].tolist() == [5]  # the crowd segment is not a target
    assert batch["meta"][1]["orig_size"] == (64, 33)
    with pytest.raises(ValueError, match="empty list"):
        collate_samples([])
    assert torch.equal(batch["meta"][0]["id_map"], a["id_map"])
    assert "id_map" not in collate_samples([a], with_id_maps=False)["meta"][0]


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="unknown augmentation recipe 'lsj2'"):
        build_transform("lsj2")
    assert build_transform("none") is None and build_transform("coco_lsj") is not None


def test_dataloader_with_workers_and_lsj(tmp_path):
    make_panoptic(tmp_path, num_images=4, size=64)
    spec = {"format": "coco_panoptic", "image_root": str(tmp_path / "images"),
            "json": str(tmp_path / "panoptic.json"), "png_root": str(tmp_path / "panoptic")}
    loader = torch.utils.data.DataLoader(build_dataset(spec, transform=coco_lsj(64)), batch_size=2,
                                         num_workers=1, collate_fn=collate_samples)
    batches = list(loader)
    assert [b["images"].shape for b in batches] == [(2, 3, 64, 64)] * 2
    assert not batches[0]["padding_mask"].any()
    assert np.mean([len(t["labels"]) for b in batches for t in b["targets"]]) > 0


def test_dataset_pickles_for_spawned_workers(tmp_path):
    import pickle

    make_panoptic(tmp_path, num_images=2, size=64)
    spec = {"format": "coco_panoptic", "image_root": str(tmp_path / "images"),
            "json": str(tmp_path / "panoptic.json"), "png_root": str(tmp_path / "panoptic")}
    dataset = build_dataset(spec, strict=False, transform=coco_lsj(64))
    copy = pickle.loads(pickle.dumps(dataset))
    torch.manual_seed(0)
    first = copy[1]
    torch.manual_seed(0)
    assert torch.equal(first["image"], dataset[1]["image"])
    copy.metadata.problems.count_skip()  # the rebuilt lock works


def test_overlapping_instance_masks_move_as_masks():
    sample = _drawn_sample()
    yy, xx = torch.meshgrid(torch.arange(60), torch.arange(90), indexing="ij")
    disc = (yy - 25) ** 2 + (xx - 50) ** 2 <= 14**2  # under the rectangle's left edge
    sample["masks"] = torch.stack([sample["id_map"] == 1, disc])
    sample["id_map"] = torch.where(sample["id_map"] == 1, 1, torch.where(disc, 2, 0))
    overlap = sample["masks"][0] & sample["masks"][1]
    assert overlap.any()
    torch.manual_seed(0)
    out = coco_lsj(96, scale_range=(1.0, 1.0))(sample)
    assert out["masks"].shape[0] == 2
    assert (out["masks"][0] & out["masks"][1]).sum() > 0.5 * overlap.sum()  # the hidden part of the disc survives
    for k in range(2):
        assert (out["masks"][k] | ~(out["id_map"] == k + 1)).all()  # each mask covers its visible pixels


def test_test_time_resize_when_the_long_side_limit_binds():
    # detectron2: short side 128 would make the long side 256 > 128, so the long side wins.
    out = inference_resize(128, 128)(_drawn_sample(100, 200))
    assert out["image"].shape == (3, 64, 128) and out["image_size"] == (64, 128)
    square = inference_resize(128, 128)(_drawn_sample(160, 160))
    assert square["image"].shape == (3, 128, 128)
