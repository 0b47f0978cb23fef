"""One crafted fixture per bad-input kind: the checker finds it, strict raises, lenient skips."""

import numpy as np
import pytest
from PIL import Image

from ecom2f.data import DataProblemError, ProblemKind, TooManyBadSamplesError, build_dataset, check_dataset
from ecom2f.data.image_io import rgb_to_id
from tests.data.helpers import copy_of, encode, read_json, write_json

LENIENT = dict(strict=False, max_bad_fraction=0.5)


def _segments(root, index=0):
    return read_json(root)["annotations"][index]["segments_info"]


def _edit_json(root, edit):
    document = read_json(root)
    edit(document)
    write_json(root, document)


# -- each corruption damages image 000001 (index 0) of a 3-image set -----------------
def truncated_jpeg(root):
    path = root / "images" / "000001.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def empty_file(root):
    (root / "images" / "000001.jpg").write_bytes(b"")


def missing_image(root):
    (root / "images" / "000001.jpg").unlink()


def missing_png(root):
    (root / "panoptic" / "000001.png").unlink()


def size_mismatch(root):
    path = root / "panoptic" / "000001.png"
    Image.open(path).crop((0, 0, 40, 64)).save(path)


def id_in_png_not_in_json(root):
    _edit_json(root, lambda d: d["annotations"][0]["segments_info"].pop(0))


def id_in_json_not_in_png(root):
    _edit_json(
        root,
        lambda d: d["annotations"][0]["segments_info"].append(
            {"id": 424242, "category_id": 1, "iscrowd": 0, "area": 30, "bbox": [0, 0, 5, 6]}
        ),
    )


def unknown_category(root):
    def edit(d):
        d["annotations"][0]["segments_info"][0]["category_id"] = 77

    _edit_json(root, edit)


def duplicate_segment_id(root):
    def edit(d):
        segments = d["annotations"][0]["segments_info"]
        segments[1]["id"] = segments[0]["id"]

    _edit_json(root, edit)


def duplicate_image_id(root):
    def edit(d):
        d["annotations"][1]["image_id"] = d["annotations"][0]["image_id"]

    _edit_json(root, edit)


ERRORS = {
    "truncated_jpeg": (truncated_jpeg, ProblemKind.UNREADABLE_IMAGE, "at_read"),
    "empty_file": (empty_file, ProblemKind.UNREADABLE_IMAGE, "at_read"),
    "missing_image": (missing_image, ProblemKind.MISSING_IMAGE, "at_start"),
    "missing_png": (missing_png, ProblemKind.MISSING_ANNOTATION_FILE, "at_start"),
    "size_mismatch": (size_mismatch, ProblemKind.SIZE_MISMATCH, "at_read"),
    "id_in_png_not_in_json": (id_in_png_not_in_json, ProblemKind.SEGMENT_NOT_IN_JSON, "at_read"),
    "id_in_json_not_in_png": (id_in_json_not_in_png, ProblemKind.SEGMENT_NOT_IN_PNG, "at_read"),
    "unknown_category": (unknown_category, ProblemKind.UNKNOWN_CATEGORY, "at_start"),
    "duplicate_segment_id": (duplicate_segment_id, ProblemKind.DUPLICATE_ID, "at_start"),
    "duplicate_image_id": (duplicate_image_id, ProblemKind.DUPLICATE_ID, "at_start"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_found_by_checker_raised_by_strict_skipped_by_lenient(case, panoptic_template, tmp_path, caplog):
    corrupt, kind, when = ERRORS[case]
    spec = copy_of(panoptic_template, tmp_path / "data")
    corrupt(tmp_path / "data")

    report = check_dataset(spec)
    assert not report.ok
    assert report.log.counts[kind] == 1, report.format()
    assert kind.value in report.format()

    with pytest.raises(DataProblemError, match=kind.value) as raised:
        dataset = build_dataset(spec, strict=True)
        for index in range(len(dataset)):
            dataset[index]
    assert raised.value.problem.kind is kind
    assert raised.value.problem.file  # names the file

    lenient = build_dataset(spec, **LENIENT)
    samples = [lenient[i] for i in range(len(lenient))]
    assert lenient.metadata.skip_counts == {kind.value: 1}
    if when == "at_start":
        assert len(lenient) == 2  # dropped before training starts
    else:
        assert len(lenient) == 3
        assert samples[0]["image_id"] == samples[1]["image_id"]  # bad one replaced by the next
    assert all(s["image_id"] != 1 or case.startswith("duplicate") for s in samples)
    assert sum(kind.value in r.message for r in caplog.records) == 1  # warned once


def test_lenient_warns_once_per_kind_and_counts_every_skip(panoptic_template, tmp_path, caplog):
    spec = copy_of(panoptic_template, tmp_path / "data")
    for name in ("000001.jpg", "000002.jpg"):
        path = tmp_path / "data" / "images" / name
        path.write_bytes(path.read_bytes()[:100])
    dataset = build_dataset(spec, strict=False, max_bad_fraction=1.0)
    for _ in range(3):
        assert dataset[0]["image_id"] == 3
    assert dataset.metadata.skip_counts == {"unreadable_image": 6}
    assert dataset.metadata.problems.skipped_samples == 6
    assert sum("unreadable_image" in r.message for r in caplog.records) == 1


def test_too_many_bad_samples_stop_at_start_with_a_clear_message(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    unknown_category(tmp_path / "data")
    with pytest.raises(TooManyBadSamplesError, match=r"1 of 3 samples \(33.3%\).*max_bad_fraction=10.0%"):
        build_dataset(spec, strict=False, max_bad_fraction=0.1)
    with pytest.raises(ValueError, match="max_bad_fraction=1.5"):
        build_dataset(spec, strict=False, max_bad_fraction=1.5)

    def break_all(document):
        for annotation in document["annotations"]:
            annotation["segments_info"][0]["category_id"] = 77

    _edit_json(tmp_path / "data", break_all)
    with pytest.raises(TooManyBadSamplesError, match="none of its 3 samples is usable"):
        build_dataset(spec, strict=False, max_bad_fraction=1.0)


def test_missing_annotation_json_is_reported(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    (tmp_path / "data" / "panoptic.json").unlink()
    assert check_dataset(spec).log.counts[ProblemKind.MISSING_ANNOTATION_FILE] == 1
    for strict in (True, False):
        with pytest.raises(DataProblemError, match="missing_annotation_file"):
            build_dataset(spec, strict=strict)


# -- repairable input: reported as warnings, loaded the same way by both modes ---------
def _stored(root, name="000001.jpg"):
    return np.asarray(Image.open(root / "images" / name).convert("RGB"))


def _rename_image(root, new_name):
    _edit_json(root, lambda d: d["images"][0].update(file_name=new_name))
    (root / "images" / "000001.jpg").unlink()


@pytest.mark.parametrize("mode", ["grayscale", "rgba", "cmyk", "cmyk_jpeg", "palette", "16bit"])
def test_odd_image_modes_convert_to_rgb(mode, panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    root = tmp_path / "data"
    rgb = _stored(root)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    if mode == "grayscale":
        (root / "images" / "000001.jpg").write_bytes(encode(Image.fromarray(rgb).convert("L"), "PNG"))
        expected, kind = np.repeat(gray[:, :, None], 3, axis=2), ProblemKind.GRAYSCALE_IMAGE
    elif mode == "rgba":
        rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 77, np.uint8)], axis=2)
        (root / "images" / "000001.jpg").write_bytes(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
        expected, kind = rgb, ProblemKind.RGBA_IMAGE
    elif mode == "cmyk":
        cmyk = Image.fromarray(rgb).convert("CMYK")
        (root / "images" / "000001.jpg").write_bytes(encode(cmyk, "TIFF"))  # lossless CMYK
        expected, kind = np.asarray(cmyk.convert("RGB")), ProblemKind.CMYK_IMAGE
    elif mode == "cmyk_jpeg":
        (root / "images" / "000001.jpg").write_bytes(encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
        expected, kind = np.asarray(Image.open(root / "images" / "000001.jpg").convert("RGB")), ProblemKind.CMYK_IMAGE
        assert np.abs(expected.astype(int) - rgb).mean() < 10  # the conversion does not invert colours
    elif mode == "palette":
        palette = Image.fromarray(rgb).convert("P")
        (root / "images" / "000001.jpg").write_bytes(encode(palette, "PNG"))
        expected, kind = np.asarray(palette.convert("RGB")), ProblemKind.PALETTE_IMAGE
    else:
        deep = gray.astype(np.uint16) * 257  # full 16-bit range
        _rename_image(root, "000001.png")
        Image.fromarray(deep).save(root / "images" / "000001.png")
        expected, kind = np.repeat(gray[:, :, None], 3, axis=2), ProblemKind.HIGH_BIT_DEPTH_IMAGE

    report = check_dataset(spec)
    assert report.ok and report.log.counts[kind] == 1, report.format()
    for strict in (True, False):
        sample = build_dataset(spec, strict=strict)[0]
        assert sample["image"].shape == (3, 64, 64)
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), expected)


def test_exif_rotation_turns_image_and_mask_together(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    root = tmp_path / "data"
    # Make the stored image non-square so the transpose is visible in the shapes.
    rgb = _stored(root)[:, :48]
    ids = rgb_to_id(np.asarray(Image.open(root / "panoptic" / "000001.png").convert("RGB")))[:, :48]
    Image.open(root / "panoptic" / "000001.png").crop((0, 0, 48, 64)).save(root / "panoptic" / "000001.png")

    def edit(document):
        document["images"][0].update(width=48)
        present = set(np.unique(ids).tolist())
        segments = document["annotations"][0]["segments_info"]
        document["annotations"][0]["segments_info"] = [s for s in segments if s["id"] in present]

    _edit_json(root, edit)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be turned 90 degrees clockwise
    (root / "images" / "000001.jpg").write_bytes(encode(Image.fromarray(rgb), "PNG", exif=exif))

    report = check_dataset(spec)
    assert report.ok and report.log.counts[ProblemKind.EXIF_ROTATION] == 1, report.format()
    for strict in (True, False):
        sample = build_dataset(spec, strict=strict)[0]
        clockwise = np.rot90(rgb, k=-1)
        assert sample["image"].shape == (3, 48, 64)
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), clockwise)
        assert np.array_equal(sample["id_map"].numpy(), np.rot90(ids, k=-1))
        assert sample["orig_size"] == (48, 64)


def test_exif_image_with_an_upright_png_keeps_the_png(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    root = tmp_path / "data"
    rgb = _stored(root)[:, :48]
    upright_ids = np.rot90(rgb_to_id(np.asarray(Image.open(root / "panoptic" / "000001.png").convert("RGB")))[:, :48], k=-1)
    from ecom2f.data.image_io import id_to_rgb

    Image.fromarray(id_to_rgb(upright_ids)).save(root / "panoptic" / "000001.png")
    present = set(np.unique(upright_ids).tolist())
    _edit_json(root, lambda d: d["annotations"][0].update(
        segments_info=[s for s in d["annotations"][0]["segments_info"] if s["id"] in present]))
    _edit_json(root, lambda d: d["images"][0].update(width=64, height=48))
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "images" / "000001.jpg").write_bytes(encode(Image.fromarray(rgb), "PNG", exif=exif))
    sample = build_dataset(spec)[0]
    assert np.array_equal(sample["id_map"].numpy(), upright_ids)


def test_zero_area_segment_is_reported_and_dropped(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    root = tmp_path / "data"
    _edit_json(root, lambda d: d["annotations"][0]["segments_info"].append(
        {"id": 515151, "category_id": 2, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]}))
    report = check_dataset(spec)
    assert report.ok and report.log.counts[ProblemKind.ZERO_AREA_SEGMENT] == 1
    for strict in (True, False):
        sample = build_dataset(spec, strict=strict)[0]
        assert 515151 not in sample["segment_ids"].tolist()
        assert len(sample["segment_ids"]) == len(_segments(root)) - 1


def test_empty_image_is_reported_and_left_out_in_both_modes(panoptic_template, tmp_path):
    spec = copy_of(panoptic_template, tmp_path / "data")
    _edit_json(tmp_path / "data", lambda d: d["annotations"][0].update(segments_info=[]))
    report = check_dataset(spec)
    assert report.ok and report.log.counts[ProblemKind.EMPTY_IMAGE] == 1
    for strict in (True, False):
        dataset = build_dataset(spec, strict=strict)
        assert [dataset[i]["image_id"] for i in range(len(dataset))] == [2, 3]
        assert dataset.metadata.skip_counts == {}


def test_training_loop_with_workers_survives_a_bad_sample(panoptic_template, tmp_path):
    import torch

    from ecom2f.data import coco_lsj, collate_samples

    spec = copy_of(panoptic_template, tmp_path / "data")
    truncated_jpeg(tmp_path / "data")
    dataset = build_dataset(spec, transform=coco_lsj(64), **LENIENT)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate_samples)
    ids = [batch["meta"][0]["image_id"] for _ in range(2) for batch in loader]
    assert ids == [2, 2, 3] * 2  # every epoch completes; the bad image is replaced
    with pytest.raises(DataProblemError, match="unreadable_image"):
        list(torch.utils.data.DataLoader(build_dataset(spec, transform=coco_lsj(64)), batch_size=1, num_workers=1,
                                         collate_fn=collate_samples))
