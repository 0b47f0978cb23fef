"""What ``ecom2f predict`` reads: folders (recursive, any-case extensions), list files, COCO JSONs; names
unique and file-system safe; the image checks of the service and the job (pixel limit on the header)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ecom2f.errors import BadInputError
from ecom2f.steps.predict.images import ImageRejected, decode_user_image
from ecom2f.steps.predict.sources import list_inputs


def _png(path, size=(8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path, format="PNG")


def test_a_folder_is_searched_recursively_and_names_are_unique_and_safe(tmp_path):
    _png(tmp_path / "b.png")
    _png(tmp_path / "sub" / "b.PNG")
    _png(tmp_path / "sub dir" / "c d.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = list_inputs(str(tmp_path))
    assert found.kind == "folder"
    assert [s.name for s in found.sources] == ["b", "sub_dir__c_d", "sub__b"]  # sorted by path
    assert all(s.image_id == s.name for s in found.sources)


def test_a_list_file_resolves_relative_lines_and_keeps_names_apart(tmp_path):
    _png(tmp_path / "x" / "a.png")
    _png(tmp_path / "y" / "a.png")
    listing = tmp_path / "images.txt"
    listing.write_text(f"# my images\nx/a.png\n\n{tmp_path / 'y' / 'a.png'}\n")
    found = list_inputs(str(listing))
    assert [s.uri for s in found.sources] == [str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.png")]
    assert [s.name for s in found.sources] == ["a", "a-2"]


def test_a_coco_json_keeps_its_ids_and_categories(tmp_path):
    document = {"images": [{"id": 7, "file_name": "p/q.jpg"}], "categories": [{"id": 3, "name": "cat"}]}
    (tmp_path / "c.json").write_text(json.dumps(document))
    found = list_inputs(str(tmp_path / "c.json"), image_root=str(tmp_path / "imgs"))
    assert found.kind == "coco" and found.categories == document["categories"]
    (source,) = found.sources
    assert (source.image_id, source.name, source.uri) == (7, "p_q", str(tmp_path / "imgs" / "p" / "q.jpg"))
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(BadInputError, match="no 'images' list"):
        list_inputs(str(tmp_path / "bad.json"), image_root=str(tmp_path))


def test_the_pixel_limit_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, format="PNG")
    with pytest.raises(ImageRejected, match=r"300x200 = 60,000 pixels exceeds the limit of 59,999") as error:
        decode_user_image(buffer.getvalue(), "big.png", max_pixels=59_999)
    assert error.value.kind == "too_large"
    decoded = decode_user_image(buffer.getvalue(), "big.png", max_pixels=60_000)
    assert decoded.rgb.shape == (200, 300, 3) and decoded.rgb.dtype == np.uint8
    # Far beyond PIL's own decompression-bomb limit: still our message, not PIL's exception.
    huge = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(huge, format="PNG")
    with pytest.raises(ImageRejected, match="serving.max_pixels"):
        decode_user_image(huge.getvalue(), "huge.png", max_pixels=1_000_000)
    with pytest.raises(ImageRejected, match="empty") as error:
        decode_user_image(b"", "e.png", max_pixels=10)
    assert error.value.kind == "unreadable"


def test_the_loader_turns_missing_and_bad_files_into_counted_problems(tmp_path):
    """A list file naming a file that is gone, or one that is not an image, costs that image only."""
    from ecom2f.steps.packing import unpack
    from ecom2f.steps.predict.stages import PredictLoader

    _png(tmp_path / "good.png", size=(8, 6))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    listing = tmp_path / "list.txt"
    listing.write_text("good.png\ngone.png\nbad.png\n")
    sources = list_inputs(str(listing)).sources
    batch = {"index": np.arange(3), "shard": np.zeros(3, int), "source": np.array([s.uri for s in sources], object),
             "name": np.array([s.name for s in sources], object),
             "image_id": np.array([json.dumps(s.image_id) for s in sources], object)}
    out = PredictLoader(max_pixels=1000)(batch)
    assert out["problem"][0] == "" and unpack(out["image"][0])["rgb"].shape == (6, 8, 3)
    assert out["problem"][1] == f"missing: {tmp_path / 'gone.png'} does not exist" and out["image"][1] == b""
    assert out["problem"][2].startswith("unreadable: ") and out["image"][2] == b""
    assert list(out["index"]) == [0, 1, 2] and list(out["name"]) == ["good", "gone", "bad"]
