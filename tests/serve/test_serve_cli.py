"""``ecom2f serve`` refuses a run it cannot serve in one line, before Ray starts; the HTTP contract's
parsing without a server."""

from __future__ import annotations

import numpy as np
import pytest

from ecom2f import storage
from ecom2f.cli import main as cli_main
from ecom2f.config import save_config
from ecom2f.steps.serve.http_api import RequestError, answer, parse_fields, parse_image
from tests.predict.conftest import make_run
from tests.steps.conftest import tiny_data_root  # noqa: F401


@pytest.fixture
def run_file(tiny_data_root, tmp_path):  # noqa: F811
    config = make_run(tiny_data_root, tmp_path / "runs")
    path = tmp_path / "run.yaml"
    save_config(config, str(path))
    return config, str(path)


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_unserveable_runs_fail_in_one_line_before_ray(run_file, capsys, monkeypatch):
    from ecom2f.steps import ray_cluster

    monkeypatch.setattr(ray_cluster, "init_ray", lambda *_: pytest.fail("Ray must not start"))
    config, path = run_file
    assert cli_main(["serve", "--config", path, "--budget", "layers_4"]) == 2
    assert _error_line(capsys).startswith("ecom2f serve: error: unknown budget 'layers_4'; the budgets under")
    storage.delete(config.storage.layout().gates, recursive=True)
    assert cli_main(["serve", "--config", path]) == 2
    assert "run step 3 (ecom2f tune-gate)" in _error_line(capsys)
    storage.delete(config.storage.layout().parent_weights)
    assert cli_main(["serve", "--config", path]) == 2
    assert "run step 1" in _error_line(capsys)


def test_request_parsing():
    assert parse_image("image/jpeg", b"abc") == (b"abc", {})
    body = (b'--B\r\nContent-Disposition: form-data; name="budget"\r\n\r\nlayers_3\r\n'
            b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x00\x01\r\n--B--\r\n")
    assert parse_image("multipart/form-data; boundary=B", body) == (b"\x89PNG\r\n\x00\x01", {"budget": "layers_3"})
    assert parse_fields("depth=3&masks=png", {}) == {"budget": None, "depth": 3, "masks": "png"}
    assert parse_fields("budget=a", {"budget": "b"})["budget"] == "b"
    for query, message in (("depth=x", "not an integer"), ("masks=gif", "choose one of"), ("k=1", "unknown")):
        with pytest.raises(RequestError, match=message) as error:
            parse_fields(query, {})
        assert error.value.status == 400
    with pytest.raises(RequestError, match="no body"):
        parse_image("image/png", b"")
    with pytest.raises(RequestError, match="no file"):
        parse_image("multipart/form-data; boundary=B", b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--B--\r\n')


def test_answers_carry_dataset_ids_names_and_decodable_masks():
    from pycocotools import mask as mask_utils

    ids = np.zeros((4, 6), dtype=np.uint8)
    ids[1:3, 2:5] = 1
    result = {"size": (4, 6), "budget": "b", "depth": 3, "encoder_gflops": 1.0, "total_gflops": 2.0, "ids": ids,
              "segments": [{"id": 1, "category_id": 1, "isthing": True}, {"id": 2, "category_id": 0, "isthing": False}],
              "semantic": ids.astype(np.int64)}
    categories = [{"id": 10, "name": "sky", "isthing": 0}, {"id": 20, "name": "cat", "isthing": 1}]
    out = answer(result, categories, "rle")
    (segment,) = out["panoptic"]["segments"]  # segment 2 has no pixel: left out
    assert (segment["category_id"], segment["name"], segment["area"], segment["bbox"]) == (20, "cat", 6, [2, 1, 3, 2])
    mask = mask_utils.decode({**segment["mask"], "counts": segment["mask"]["counts"].encode()})
    assert np.array_equal(mask.astype(bool), ids == 1)
    assert [c["name"] for c in out["semantic"]["classes"]] == ["sky", "cat"]
