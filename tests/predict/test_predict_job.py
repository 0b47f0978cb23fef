"""``ecom2f predict`` as a job: its COCO files read back by ``ecom2f pq`` and pycocotools with the values
the Predictor's results give, a rerun after an interruption redoes only the unwritten shards, bad
images are counted skips, bad choices fail before any work, S3 in and out, and Ray Data gives the
same records as the in-process run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ecom2f import storage
from ecom2f.cli import main as cli_main
from ecom2f.errors import BadInputError, MissingFileError, MissingStepError
from ecom2f.evaluation import PQStat, pq_single
from ecom2f.evaluation.coco_panoptic_files import pq_compute_files, read_panoptic_png
from ecom2f.steps.predict.job import PredictOptions, run_predict
from ecom2f.steps.predict.layout import PredictLayout
from ecom2f.steps.predict.predictor import Predictor
from ecom2f.steps.predict.stages import PredictModel, PredictWriter
from tests.predict.conftest import PLANTED, make_run, sample_images, write_image_folder


def _val(tiny_run) -> tuple[Path, Path, Path]:
    """The synthetic validation split: (panoptic JSON, its PNG folder, its image folder)."""
    root = Path(tiny_run.data.root) / "synthetic" / "val"
    return root / "panoptic.json", root / "panoptic", root / "images"


def _records(output: str) -> list[dict]:
    layout = PredictLayout(output)
    records = []
    for uri in storage.list_uris(layout.shards):
        records += json.loads(storage.read_text(uri))["records"]
    return sorted(records, key=lambda r: r["index"])


def _without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ----------------------------------------------------------------------------- read back by other tools


def test_coco_outputs_read_back_by_ecom2f_pq_and_pycocotools(tiny_run, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json, gt_pngs, images = _val(tiny_run)
    output = tmp_path / "out"
    summary = run_predict(tiny_run, PredictOptions(input=str(gt_json), output=str(output), image_root=str(images),
                                                   budget="layers_3"))
    gt = json.loads(gt_json.read_text())
    assert summary.predicted == len(gt["images"]) and summary.skipped == 0
    categories = sorted(gt["categories"], key=lambda c: c["id"])

    # The same images through Predictor, scored in memory: the files must give the same PQ, class by class.
    predictor = Predictor.from_run(tiny_run)
    expected = PQStat()
    detections = {}
    for entry in gt["images"]:
        rgb = np.asarray(Image.open(images / entry["file_name"]).convert("RGB"))
        (prediction,) = predictor.predict([rgb], budget="layers_3")
        ids, segments = prediction.panoptic
        mapped = [{"id": s["id"], "category_id": categories[s["category_id"]]["id"]} for s in segments
                  if (ids == s["id"]).any()]
        annotation = next(a for a in gt["annotations"] if a["image_id"] == entry["id"])
        truth = read_panoptic_png(gt_pngs / annotation["file_name"])
        expected += pq_single(ids.numpy(), mapped, truth, annotation["segments_info"], categories)
        detections[entry["id"]] = prediction.instances
    assert cli_main(["pq", "--gt-json", str(gt_json), "--gt-folder", str(gt_pngs),
                     "--pred-json", str(output / "panoptic.json")]) == 0
    assert "PQ" in capsys.readouterr().out
    files = pq_compute_files(gt_json, output / "panoptic.json", gt_pngs)
    assert files == expected.summary(categories)
    assert sum(stat.tp + stat.fp for stat in expected.per_category.values()) > 0  # predictions were scored

    # pycocotools reads the instance results back as the Predictor's detections (class, score, mask).
    coco_gt = COCO()
    coco_gt.dataset = {"images": [{"id": e["id"], "height": e["height"], "width": e["width"]} for e in gt["images"]],
                       "annotations": [], "categories": categories}
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(str(output / "instances.json"))
    for image_id, instances in detections.items():
        loaded = coco_dt.loadAnns(coco_dt.getAnnIds(imgIds=[image_id]))
        assert len(loaded) == len(instances.scores) > 0
        np.testing.assert_allclose([a["score"] for a in loaded], instances.scores.numpy(), rtol=1e-6)
        assert [a["category_id"] for a in loaded] == [categories[int(c)]["id"] for c in instances.classes]
        for annotation, mask in zip(loaded, instances.masks):
            assert np.array_equal(coco_dt.annToMask(annotation).astype(bool), mask.numpy())
    evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
    evaluator.evaluate()
    evaluator.accumulate()  # runs to the end on our files (no ground-truth masks here: AP is -1)


def test_table_semantic_pngs_and_overlays(tiny_run, tmp_path):
    folder = tmp_path / "images"
    write_image_folder(folder, sample_images())
    output = tmp_path / "out"
    run_predict(tiny_run, PredictOptions(input=str(folder), output=str(output), budget="layers_5", vis=True))
    table = pd.read_parquet(output / "images.parquet")
    assert table["depth"].tolist() == PLANTED["layers_5"] and (table["status"] == "ok").all()
    assert (table["total_gflops"] > table["encoder_gflops"]).all() and (table["seconds"] > 0).all()
    predictor = Predictor.from_run(tiny_run)
    for name, image, prediction in zip(table["name"], sample_images(), predictor.predict(sample_images(),
                                                                                          budget="layers_5")):
        semantic = np.asarray(Image.open(output / "semantic" / f"{name}.png"))
        assert semantic.shape == image.shape[:2] and (semantic != prediction.semantic.numpy()).sum() <= 2
        overlay = Image.open(output / "vis" / f"{name}.jpg")
        assert overlay.format == "JPEG" and overlay.size == (image.shape[1], image.shape[0])
    success = json.loads((output / "_SUCCESS.json").read_text())
    assert success["predicted"] == len(table) and success["settings"]["budget"] == "layers_5"


# ----------------------------------------------------------------------------- resume


def test_a_rerun_after_an_interruption_redoes_only_the_unwritten_shards(tiny_run, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    write_image_folder(folder, sample_images())  # 7 images, shards of 3: [0-2] [3-5] [6]
    output = tmp_path / "out"
    real_record = PredictWriter.record

    def failing(self, row, *args):
        if int(row["index"]) == 4:
            raise RuntimeError("interrupted")
        return real_record(self, row, *args)

    monkeypatch.setattr(PredictWriter, "record", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_predict(tiny_run, PredictOptions(input=str(folder), output=str(output), budget="layers_3"))
    layout = PredictLayout(str(output))
    assert storage.exists(layout.shard(0)) and not storage.exists(layout.shard(1))
    assert not any(storage.exists(uri) for uri in (layout.panoptic_json, layout.instances_json, layout.success))
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]  # no temporary file left visible
    monkeypatch.setattr(PredictWriter, "record", real_record)

    seen = []
    real_call = PredictModel.__call__
    monkeypatch.setattr(PredictModel, "__call__", lambda self, batch: seen.extend(batch["index"]) or real_call(self, batch))
    summary = run_predict(tiny_run, PredictOptions(input=str(folder), output=str(output), budget="layers_3"))
    assert summary.shards_skipped == 1 and summary.shards_run == 2 and sorted(seen) == [3, 4, 5, 6]
    clean = tmp_path / "clean"
    run_predict(tiny_run, PredictOptions(input=str(folder), output=str(clean), budget="layers_3"))
    assert json.loads((output / "panoptic.json").read_text()) == json.loads((clean / "panoptic.json").read_text())
    assert (output / "instances.json").read_text() == (clean / "instances.json").read_text()

    seen.clear()  # other settings (another budget): nothing written before is reused
    summary = run_predict(tiny_run, PredictOptions(input=str(folder), output=str(output), budget="layers_5"))
    assert summary.shards_skipped == 0 and sorted(seen) == list(range(7))
    assert pd.read_parquet(output / "images.parquet")["depth"].tolist() == PLANTED["layers_5"]


# ----------------------------------------------------------------------------- bad input


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def test_bad_images_are_counted_skips_and_odd_ones_are_converted(tiny_data_root, tmp_path):
    config = make_run(tiny_data_root, tmp_path / "runs", "serving.max_pixels=6000")
    folder = tmp_path / "images"
    folder.mkdir()
    rgb = Image.fromarray(sample_images()[1])  # 80 wide, 48 high
    (folder / "a_good.png").write_bytes(_png(rgb))
    (folder / "b_unreadable.jpg").write_bytes(b"this is not an image at all")
    (folder / "c_truncated.jpg").write_bytes(_jpeg(rgb)[:300])
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_cmyk.jpg").write_bytes(_jpeg(rgb.convert("CMYK")))
    (folder / "f_gray.png").write_bytes(_png(rgb.convert("L")))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    (folder / "g_exif.jpg").write_bytes(_jpeg(rgb, exif=exif))
    (folder / "h_huge.png").write_bytes(_png(Image.new("RGB", (100, 80))))  # 8,000 px > 6,000
    summary = run_predict(config, PredictOptions(input=str(folder), output=str(tmp_path / "out"), depth=3))
    assert (summary.predicted, summary.skipped) == (4, 4)
    assert summary.problems == {"unreadable": 3, "too_large": 1}
    table = pd.read_parquet(tmp_path / "out" / "images.parquet").set_index("name")
    assert table.loc["a_good", "status"] == "ok" and (table.loc["a_good", ["height", "width"]] == [48, 80]).all()
    for name in ("b_unreadable", "c_truncated", "d_empty"):
        assert table.loc[name, "status"] == "skipped" and table.loc[name, "problem"].startswith("unreadable: ")
    assert "serving.max_pixels" in table.loc["h_huge", "problem"]
    assert "cmyk_image" in table.loc["e_cmyk", "notes"] and "grayscale_image" in table.loc["f_gray", "notes"]
    assert "exif_rotation" in table.loc["g_exif", "notes"]
    assert (table.loc["g_exif", ["height", "width"]] == [80, 48]).all()  # results in display orientation
    ids = read_panoptic_png(tmp_path / "out" / "panoptic" / "g_exif.png")
    assert ids.shape == (80, 48)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_choices_fail_before_any_work(tiny_run, tiny_data_root, tmp_path):
    folder = tmp_path / "images"
    write_image_folder(folder, sample_images()[:2])
    output = tmp_path / "out"

    def run(config=tiny_run, **kwargs):
        options = {"input": str(folder), "output": str(output), "budget": "layers_3", **kwargs}
        return run_predict(config, PredictOptions(**options))

    with pytest.raises(BadInputError, match=r"unknown budget 'layers_7'; the budgets under .* are: "
                                            r"layers_3, layers_5"):
        run(budget="layers_7")
    with pytest.raises(BadInputError, match="several budgets exist"):
        run(budget=None)
    with pytest.raises(MissingFileError, match="does not exist"):
        run(input=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images in"):
        run(input=str(tmp_path / "empty"))
    gt_json, _, _ = _val(tiny_run)
    with pytest.raises(BadInputError, match="--image-root"):
        run(input=str(gt_json))
    with pytest.raises(BadInputError, match="categories but the model predicts"):
        (tmp_path / "cats.json").write_text(json.dumps([{"id": 1, "name": "one"}]))
        run(categories=str(tmp_path / "cats.json"))
    bare = make_run(tiny_data_root, tmp_path / "bare")
    storage.delete(bare.storage.layout().gates, recursive=True)
    with pytest.raises(MissingStepError, match=r"run step 3 \(ecom2f tune-gate\)"):
        run(bare, budget=None)
    storage.delete(bare.storage.layout().parent_weights)
    with pytest.raises(MissingStepError, match="run step 1"):
        run(bare, budget=None, depth=3)
    assert not output.exists()


def test_the_command_line(tiny_run, tmp_path, capsys):
    from ecom2f.config import save_config

    config_file = tmp_path / "run.yaml"
    save_config(tiny_run, str(config_file))
    folder = tmp_path / "images"
    write_image_folder(folder, sample_images()[:3])
    argv = ["predict", "--config", str(config_file), "--input", str(folder), "--output", str(tmp_path / "out"),
            "--budget", "layers_3"]
    assert cli_main(argv) == 0
    assert "predicted 3 of 3 images" in capsys.readouterr().out
    assert cli_main([*argv[:-1], "layers_8"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("ecom2f predict: error: unknown budget 'layers_8'")


# ----------------------------------------------------------------------------- S3 and Ray


def _upload_images(bucket: str, count: int) -> str:
    prefix = storage.join(bucket, "inputs")
    for index, image in enumerate(sample_images()[:count]):
        storage.write_bytes(storage.join(prefix, "nested" if index % 2 else "", f"img_{index:02d}.png"),
                            _png(Image.fromarray(image)))
    return prefix


def test_s3_input_and_output(tiny_run, s3_bucket):
    prefix = _upload_images(s3_bucket, 4)
    output = storage.join(s3_bucket, "predictions")
    summary = run_predict(tiny_run, PredictOptions(input=prefix, output=output, budget="layers_3"))
    assert (summary.predicted, summary.on_ray) == (4, False)
    layout = PredictLayout(output)
    document = json.loads(storage.read_text(layout.panoptic_json))
    names = sorted(a["file_name"] for a in document["annotations"])
    assert names == ["img_00.png", "img_02.png", "nested__img_01.png", "nested__img_03.png"]
    png = Image.open(io.BytesIO(storage.read_bytes(layout.panoptic_png("nested__img_01"))))
    assert png.size == (80, 48)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_large_s3_inputs_run_on_ray_data_with_the_same_records(ray_cluster, tiny_run, s3_bucket):
    prefix = _upload_images(s3_bucket, 7)
    local = run_predict(tiny_run, PredictOptions(input=prefix, output=storage.join(s3_bucket, "local"),
                                                 budget="layers_5"))
    assert not local.on_ray
    config = tiny_run.model_copy(update={"serving": tiny_run.serving.model_copy(
        update={"predict": tiny_run.serving.predict.model_copy(update={"ray_threshold": 5})})})
    on_ray = run_predict(config, PredictOptions(input=prefix, output=storage.join(s3_bucket, "ray"),
                                                budget="layers_5"))
    assert on_ray.on_ray and on_ray.predicted == 7 and on_ray.shards_run == 3
    ray_records = _records(storage.join(s3_bucket, "ray"))
    local_records = _records(storage.join(s3_bucket, "local"))
    assert [r["depth"] for r in ray_records] == [r["depth"] for r in local_records]
    for ray_record, local_record in zip(ray_records, local_records):
        # Ray Data batches other images together than the in-process run: equal to float rounding.
        ray_segments, local_segments = (r["panoptic"]["segments_info"] for r in (ray_record, local_record))
        assert [s["category_id"] for s in ray_segments] == [s["category_id"] for s in local_segments]
        assert all(abs(a["area"] - b["area"]) <= 2 for a, b in zip(ray_segments, local_segments))
        assert [d["category_id"] for d in ray_record["instances"]] == [d["category_id"]
                                                                       for d in local_record["instances"]]
        np.testing.assert_allclose([d["score"] for d in ray_record["instances"]],
                                   [d["score"] for d in local_record["instances"]], rtol=1e-4)
    again = run_predict(config, PredictOptions(input=prefix, output=storage.join(s3_bucket, "ray"),
                                               budget="layers_5"))
    assert again.shards_skipped == 3 and again.shards_run == 0
