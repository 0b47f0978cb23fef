import hashlib
import json
import time

import numpy as np
import pytest
from scipy.stats import spearmanr

from ecom2f.data import build_dataset, training_targets
from ecom2f.data.image_io import rgb_to_id
from ecom2f.data.synthetic import CLUTTERED_FRACTION, GENERATOR_VERSION, categories, generate, is_cluttered, render
from tests.data.helpers import panoptic_spec


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(tmp_path / name, 4, 64, seed)
    for rel in ("panoptic.json", "images/000003.jpg", "panoptic/000003.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes(), rel


def test_200_images_in_well_under_a_minute(tmp_path):
    start = time.perf_counter()
    generate(tmp_path, 200, 160, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"generating 200 images took {elapsed:.1f} s"
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 200


def test_loader_round_trip_gives_exactly_the_drawn_segments(tmp_path):
    generate(tmp_path, 8, 96, seed=11)
    dataset = build_dataset(panoptic_spec(tmp_path))
    metadata = dataset.metadata
    assert len(dataset) == 8
    for index in range(8):
        drawn = render(index, 96, seed=11)
        sample = dataset[index]
        assert sample["image_id"] == index + 1
        assert np.array_equal(sample["id_map"].numpy(), drawn["id_map"])
        assert sample["segment_ids"].tolist() == [s["id"] for s in drawn["segments_info"]]
        for k, segment in enumerate(drawn["segments_info"]):
            assert np.array_equal(sample["masks"][k].numpy(), drawn["id_map"] == segment["id"])
            assert metadata.contiguous_to_dataset_id[sample["labels"][k]] == segment["category_id"]
            assert bool(sample["iscrowd"][k]) == bool(segment["iscrowd"])
            assert int(sample["masks"][k].sum()) == segment["area"]
        # The JPEG is lossy, but it is the drawn image.
        assert np.abs(sample["image"].permute(1, 2, 0).numpy().astype(int) - drawn["image"]).mean() < 8
        assert sample["difficulty"] == drawn["difficulty"]


def test_categories_things_and_stuff_with_non_contiguous_ids(tmp_path):
    generate(tmp_path, 2, 64, seed=0)
    metadata = build_dataset(panoptic_spec(tmp_path)).metadata
    assert metadata.num_classes == 10
    assert metadata.contiguous_to_dataset_id == [1, 2, 3, 4, 5, 6, 7, 10, 11, 12]
    assert metadata.thing_classes == list(range(7)) and metadata.stuff_classes == [7, 8, 9]
    assert len({c["name"] for c in categories()}) == 10


def test_difficulty_is_recorded_and_follows_what_was_drawn():
    drawn = [render(i, 96, seed=1, scenes="graded") for i in range(60)]
    difficulty = np.array([d["difficulty"] for d in drawn])
    assert 0 <= difficulty.min() and difficulty.max() <= 1
    assert difficulty.max() - difficulty.min() > 0.4, "images must range from easy to hard"
    things = [sum(1 for s in d["segments_info"] if s["category_id"] <= 7) for d in drawn]
    assert spearmanr(difficulty, things).statistic > 0.5
    # Hard images carry pixel noise: the high-frequency energy grows with difficulty.
    roughness = [np.abs(np.diff(d["image"].astype(float), axis=1)).mean() for d in drawn]
    assert spearmanr(difficulty, roughness).statistic > 0.5
    easiest = drawn[int(difficulty.argmin())]
    assert sum(1 for s in easiest["segments_info"] if s["category_id"] <= 7) <= 2


def test_some_images_have_crowd_and_void_and_targets_drop_crowd(tmp_path):
    # The graded scenes: their occluded slivers make void regions often (mixed scenes rarely have any).
    generate(tmp_path, 40, 96, seed=2, scenes="graded")
    dataset = build_dataset(panoptic_spec(tmp_path))
    crowd_seen = void_seen = False
    for sample in dataset:
        targets = training_targets(sample)
        assert len(targets["labels"]) == int((~sample["iscrowd"]).sum())
        crowd_seen |= bool(sample["iscrowd"].any())
        void_seen |= bool((sample["id_map"] == 0).any())
        # masks cover exactly the non-void pixels, once each
        assert np.array_equal(sample["masks"].sum(0).numpy(), (sample["id_map"] != 0).numpy().astype(int))
    assert crowd_seen and void_seen


def test_json_has_difficulty_and_scene_per_image_and_the_generator_in_info(tmp_path):
    generate(tmp_path, 3, 64, seed=0)
    document = json.loads((tmp_path / "panoptic.json").read_text())
    for image, annotation in zip(document["images"], document["annotations"]):
        assert image["difficulty"] == annotation["difficulty"]
        assert set(annotation["difficulty_factors"]) >= {"num_objects", "occlusion", "noise", "blur"}
    assert [a["scene"] for a in document["annotations"]] == ["cluttered", "simple", "cluttered"]
    assert document["info"]["generator_version"] == GENERATOR_VERSION == 2
    assert document["info"]["scenes"] == "mixed" and document["info"]["cluttered_fraction"] == CLUTTERED_FRACTION
    generate(tmp_path / "graded", 2, 64, seed=0, scenes="graded")
    graded = json.loads((tmp_path / "graded" / "panoptic.json").read_text())
    assert graded["info"]["generator_version"] == 1 and "cluttered_fraction" not in graded["info"]
    assert {a["scene"] for a in graded["annotations"]} == {"graded"}


# sha256 over images 0..5 (image, id map, segments JSON, difficulty) printed by the generator before
# the mixed scenes existed (commit e92e6c5): the graded scenes must stay byte for byte what they were.
GRADED_DIGESTS = {(128, 0): "1eb10b49067e154ac170d895c23f233b6f00c1dcf67b735342c3c9d1d106443a",
                  (96, 3): "6dc8fa9be7286bccc716e5d0512b5a760b0647777cc1d2647c6b257acff03e75"}


@pytest.mark.parametrize(("size", "seed"), sorted(GRADED_DIGESTS))
def test_graded_scenes_are_version_1_byte_for_byte(size, seed):
    digest = hashlib.sha256()
    for index in range(6):
        drawn = render(index, size, seed, scenes="graded")
        digest.update(drawn["image"].tobytes())
        digest.update(drawn["id_map"].tobytes())
        digest.update(json.dumps(drawn["segments_info"]).encode())
        digest.update(repr(drawn["difficulty"]).encode())
    assert digest.hexdigest() == GRADED_DIGESTS[(size, seed)]


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.3, 0.8, 1.0])
def test_a_mixed_split_holds_the_stated_share_of_cluttered_scenes_in_every_prefix(fraction):
    cluttered = np.cumsum([is_cluttered(i, fraction) for i in range(200)])
    expected = np.floor(np.arange(1, 201) * fraction + 0.5)
    assert np.array_equal(cluttered, expected)
    scenes = [render(i, 64, seed=2, cluttered_fraction=fraction)["scene"] for i in range(10)]
    assert scenes.count("cluttered") == int(np.floor(10 * fraction + 0.5))


def test_cluttered_scenes_hold_more_and_smaller_segments():
    """The complexity axis: every cluttered scene has more segments than any simple one, and its
    things are several times smaller; cluttered scenes are also rougher (texture, strokes) and score
    a higher recorded difficulty."""
    drawn = [render(i, 96, seed=5) for i in range(40)]
    simple = [d for d in drawn if d["scene"] == "simple"]
    cluttered = [d for d in drawn if d["scene"] == "cluttered"]
    assert len(simple) == len(cluttered) == 20

    def thing_areas(d):
        return [s["area"] for s in d["segments_info"] if s["category_id"] <= 7 and not s["iscrowd"]]

    assert min(len(d["segments_info"]) for d in cluttered) > max(len(d["segments_info"]) for d in simple)
    assert min(len(thing_areas(d)) for d in cluttered) >= 9 and max(len(thing_areas(d)) for d in simple) <= 3
    assert np.median([a for d in cluttered for a in thing_areas(d)]) * 4 < np.median(
        [a for d in simple for a in thing_areas(d)])
    roughness = lambda d: np.abs(np.diff(d["image"].astype(float), axis=1)).mean()
    assert min(roughness(d) for d in cluttered) > max(roughness(d) for d in simple)
    assert min(d["difficulty"] for d in cluttered) > max(d["difficulty"] for d in simple)
    assert not any(s["iscrowd"] for d in simple for s in d["segments_info"])


def test_png_encoding_is_coco_rgb_ids(tmp_path):
    generate(tmp_path, 1, 64, seed=0)
    from PIL import Image

    ids = rgb_to_id(np.asarray(Image.open(tmp_path / "panoptic" / "000001.png")))
    assert np.array_equal(ids, render(0, 64, seed=0)["id_map"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_images=0"):
        generate(tmp_path, 0)
    with pytest.raises(ValueError, match="image_size=8"):
        render(0, 8)
    with pytest.raises(ValueError, match="scenes='busy'"):
        generate(tmp_path, 1, scenes="busy")
    with pytest.raises(ValueError, match="cluttered_fraction=1.5"):
        render(0, 64, cluttered_fraction=1.5)
