"""COCO panoptic (real sample, Cityscapes layout), COCO instances and semantic loaders."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ecom2f.data import DataProblemError, ProblemKind, build_dataset, check_dataset, training_targets
from ecom2f.data.image_io import rgb_to_id
from tests.data.helpers import make_panoptic, make_semantic

# pycocotools 2.0.11 calls np.array(copy=False) on numpy 2 (its own warning, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def coco_sample(shared_dir):
    root = shared_dir / "data" / "coco_panoptic_sample"
    if not root.exists():
        pytest.skip(f"{root} is not available")
    return root


def test_real_coco_panoptic_sample_loads_exactly_the_json_segments(coco_sample):
    spec = {
        "format": "coco_panoptic",
        "image_root": str(coco_sample / "input_images"),
        "json": str(coco_sample / "panoptic_examples.json"),
        "png_root": str(coco_sample / "panoptic_examples"),
    }
    document = json.loads((coco_sample / "panoptic_examples.json").read_text())
    dataset = build_dataset(spec, strict=True)
    metadata = dataset.metadata
    assert metadata.num_classes == 133 and len(metadata.thing_classes) == 80
    expected_void = {142238: 2712, 439180: 7189}
    expected_crowd = {142238: 1, 439180: 2}
    assert len(dataset) == 2
    for sample, annotation in zip(dataset, document["annotations"]):
        info = annotation["segments_info"]
        assert sample["image_id"] == annotation["image_id"]
        assert sample["segment_ids"].tolist() == [s["id"] for s in info]
        assert [metadata.contiguous_to_dataset_id[c] for c in sample["labels"].tolist()] == [s["category_id"] for s in info]
        assert sample["masks"].sum((1, 2)).tolist() == [s["area"] for s in info]
        assert sample["iscrowd"].tolist() == [bool(s["iscrowd"]) for s in info]
        assert int((sample["id_map"] == 0).sum()) == expected_void[sample["image_id"]]
        assert int(sample["iscrowd"].sum()) == expected_crowd[sample["image_id"]]
        png = rgb_to_id(np.asarray(Image.open(coco_sample / "panoptic_examples" / annotation["file_name"])))
        assert np.array_equal(sample["id_map"].numpy(), png)
        jpg = np.asarray(Image.open(coco_sample / "input_images" / sample["file_name"]).convert("RGB"))
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), jpg)
        targets = training_targets(sample)
        assert len(targets["labels"]) == len(info) - expected_crowd[sample["image_id"]]
    assert check_dataset(spec).ok


def test_registry_names_resolve_under_the_data_root(tmp_path, monkeypatch):
    make_panoptic(tmp_path / "synthetic" / "train", num_images=2)
    monkeypatch.setenv("ECOM2F_DATASETS", str(tmp_path))
    dataset = build_dataset("synthetic_panoptic_train")
    assert len(dataset) == 2 and dataset.metadata.name == "synthetic_panoptic_train"
    with pytest.raises(KeyError, match="no dataset named 'coco_2017_trian_panoptic'"):
        build_dataset("coco_2017_trian_panoptic")
    with pytest.raises(ValueError, match=r"needs keys \['png_root'\]"):
        build_dataset({"format": "coco_panoptic", "image_root": "a", "json": "b"})
    with pytest.raises(ValueError, match="format 'voc' is not one of"):
        build_dataset({"format": "voc"})


def test_builtin_names_use_detectron2_layout(tmp_path):
    from ecom2f.data.registry import registered_datasets, resolve_spec

    names = registered_datasets()
    for name in ("coco_2017_train_panoptic", "coco_2017_val_panoptic", "coco_2017_train", "coco_2017_val",
                 "cityscapes_fine_panoptic_train", "cityscapes_fine_panoptic_val", "ade20k_sem_seg_train",
                 "ade20k_sem_seg_val"):
        assert name in names
    spec = resolve_spec("coco_2017_val_panoptic", root=str(tmp_path))
    assert spec["json"] == str(tmp_path / "coco/annotations/panoptic_val2017.json")
    assert spec["png_root"] == str(tmp_path / "coco/panoptic_val2017")
    assert resolve_spec("coco_2017_val", root="s3://bucket/data")["image_root"] == "s3://bucket/data/coco/val2017"


def test_cityscapes_layout_with_city_folders_and_sparse_category_ids(tmp_path):
    """Cityscapes panoptic: images in leftImg8bit/<split>/<city>/, category ids 7..33."""
    source = tmp_path / "source"
    make_panoptic(source, num_images=2)
    document = json.loads((source / "panoptic.json").read_text())
    remap = {c["id"]: 7 + 2 * i for i, c in enumerate(document["categories"])}  # 7, 9, ..., 25
    root = tmp_path / "datasets" / "cityscapes"
    image_dir, png_dir = root / "leftImg8bit" / "val", root / "gtFine" / "cityscapes_panoptic_val"
    png_dir.mkdir(parents=True)
    for i, (image, annotation) in enumerate(zip(document["images"], document["annotations"])):
        city = ["frankfurt", "lindau"][i]
        name = f"{city}_000000_{i:06d}_leftImg8bit.png"
        (image_dir / city).mkdir(parents=True)
        Image.open(source / "images" / image["file_name"]).save(image_dir / city / name)
        shutil.copy(source / "panoptic" / annotation["file_name"], png_dir / f"{city}_{i}_gtFine_panoptic.png")
        image["file_name"] = name
        annotation["file_name"] = f"{city}_{i}_gtFine_panoptic.png"
        for segment in annotation["segments_info"]:
            segment["category_id"] = remap[segment["category_id"]]
    for category in document["categories"]:
        category["id"] = remap[category["id"]]
    (root / "gtFine" / "cityscapes_panoptic_val.json").write_text(json.dumps(document))

    dataset = build_dataset("cityscapes_fine_panoptic_val", root=str(tmp_path / "datasets"))
    assert dataset.metadata.contiguous_to_dataset_id == [7 + 2 * i for i in range(10)]
    assert dataset.metadata.dataset_id_to_contiguous[25] == 9
    reference = build_dataset(
        {"format": "coco_panoptic", "image_root": str(source / "images"), "json": str(source / "panoptic.json"),
         "png_root": str(source / "panoptic")}
    )
    for ours, theirs in zip(dataset, reference):
        assert ours["labels"].tolist() == theirs["labels"].tolist()  # same contiguous classes
        assert np.array_equal(ours["id_map"].numpy(), theirs["id_map"].numpy())


def _instances_document(tmp_path):
    """COCO instances built from a synthetic panoptic set: polygons, RLE and crowd RLE."""
    source = tmp_path / "source"
    make_panoptic(source, num_images=2, seed=7, size=64)  # seed 7: both images have a crowd
    panoptic = json.loads((source / "panoptic.json").read_text())
    annotations, masks = [], {}
    for annotation in panoptic["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(source / "panoptic" / annotation["file_name"])))
        for segment in annotation["segments_info"]:
            if segment["category_id"] > 7:
                continue  # stuff has no instances
            mask = ids == segment["id"]
            ann_id = len(annotations) + 1
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            if segment["iscrowd"]:  # crowd: uncompressed RLE, as in COCO
                segmentation = {"size": [64, 64], "counts": _uncompressed_counts(mask)}
            elif ann_id % 2:
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:  # a polygon of the mask's bounding rectangle, and the mask that polygon draws
                rows, cols = np.nonzero(mask)
                x0, y0, x1, y1 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
                segmentation = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
                mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, 64, 64))).astype(bool)
            annotations.append({"id": ann_id, "image_id": annotation["image_id"], "category_id": segment["category_id"],
                                "iscrowd": segment["iscrowd"], "area": int(mask.sum()), "segmentation": segmentation,
                                "bbox": segment["bbox"]})
            masks[ann_id] = mask
    document = {"images": panoptic["images"], "annotations": annotations,
                "categories": [{"id": c["id"], "name": c["name"]} for c in panoptic["categories"] if c["isthing"]]}
    (tmp_path / "instances.json").write_text(json.dumps(document))
    spec = {"format": "coco_instances", "image_root": str(source / "images"), "json": str(tmp_path / "instances.json")}
    return spec, document, masks


def _uncompressed_counts(mask):
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def test_coco_instances_polygons_rle_and_crowd(tmp_path):
    spec, document, masks = _instances_document(tmp_path)
    kinds = [type(a["segmentation"]).__name__ + str(a["iscrowd"]) for a in document["annotations"]]
    assert {"list0", "dict0", "dict1"} <= set(kinds)  # polygons, RLE and crowd RLE all present
    dataset = build_dataset(spec)
    assert dataset.metadata.num_classes == 7 and dataset.metadata.stuff_classes == []
    total = 0
    for sample in dataset:
        for k, segment in enumerate(sample["segments_info"]):
            assert np.array_equal(sample["masks"][k].numpy(), masks[segment["ann_id"]])
            assert bool(sample["iscrowd"][k]) == bool(segment["iscrowd"])
            total += 1
        assert sample["is_thing"].all()
    assert total == len(document["annotations"])
    assert check_dataset(spec).ok


def test_coco_instances_bad_annotations(tmp_path):
    spec, document, _ = _instances_document(tmp_path)
    document["annotations"][0]["category_id"] = 99
    document["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0]]
    (tmp_path / "instances.json").write_text(json.dumps(document))
    report = check_dataset(spec)
    assert report.log.counts[ProblemKind.UNKNOWN_CATEGORY] == 1 and report.log.counts[ProblemKind.BAD_ANNOTATION] == 1
    with pytest.raises(DataProblemError, match="category_id 99"):
        build_dataset(spec)


def test_semantic_labels_ignore_value_and_segments(tmp_path):
    label = np.array([[0, 0, 2, 255], [1, 1, 2, 255]], dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    make_semantic(tmp_path, [label, np.full((16, 32), 1, np.uint8)])
    spec = {"format": "semantic", "image_root": str(tmp_path / "images"), "label_root": str(tmp_path / "labels"),
            "classes": ["road", "car", "tree"], "ignore_value": 255}
    dataset = build_dataset(spec)
    sample = dataset[0]
    assert sample["labels"].tolist() == [0, 1, 2]
    for k, cls in enumerate([0, 1, 2]):
        assert np.array_equal(sample["masks"][k].numpy(), label == cls)
    assert np.array_equal(sample["id_map"].numpy(), np.where(label == 255, 0, label.astype(int) + 1))
    assert not sample["is_thing"].any()
    assert dataset.metadata.class_names == ["road", "car", "tree"]
    assert check_dataset(spec).ok


def test_semantic_out_of_range_and_non_contiguous_labels(tmp_path):
    good = np.zeros((16, 16), np.uint8)
    bad = np.full((16, 16), 7, np.uint8)
    make_semantic(tmp_path / "a", [good, bad, good + 2])
    spec = {"format": "semantic", "image_root": str(tmp_path / "a/images"), "label_root": str(tmp_path / "a/labels"),
            "classes": 3}
    report = check_dataset(spec)
    assert report.log.counts[ProblemKind.LABEL_OUT_OF_RANGE] == 1 and not report.ok
    assert report.log.counts[ProblemKind.NON_CONTIGUOUS_LABELS] == 1  # class 1 never used
    with pytest.raises(DataProblemError, match=r"label values \[7\] are outside 0..2"):
        build_dataset(spec)[1]
    lenient = build_dataset(spec, strict=False, max_bad_fraction=0.5)
    assert lenient[1]["image_id"] == "002" and lenient.metadata.skip_counts == {"label_out_of_range": 1}
    with pytest.raises(ValueError, match="ignore_value=1 is also a class index"):
        build_dataset(spec | {"ignore_value": 1})
