"""``ecom2f serve`` end to end on a local Ray cluster, HTTP on 127.0.0.1 only: answers equal the
Predictor's, concurrent requests are batched, bad requests get 400 / 413 with a message, the health
route lists the budgets. Run under the Ray lock: ``flock /tmp/ecom2f-ray.lock pytest tests/serve``."""

from __future__ import annotations

import io
import json
import socket
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from ecom2f.steps.predict.categories import resolve_categories
from ecom2f.steps.predict.predictor import Predictor
from tests.predict.conftest import BUDGETS, PLANTED, make_run, sample_images
from tests.steps.conftest import tiny_data_root  # noqa: F401

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

MAX_PIXELS = 20_000
MAX_REQUEST_MB = 0.05


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_data_root, tmp_path_factory):  # noqa: F811
    """The tiny run served with 2 budgets on a free loopback port; Serve shut down at the module's end."""
    from ray import serve

    from ecom2f.steps.serve.server import start_serving

    port = _free_port()
    config = make_run(tiny_data_root, tmp_path_factory.mktemp("serve_runs"), "serving.budget=layers_3",
                      f"serving.serve.port={port}", "serving.serve.num_cpus=0.5", "serving.serve.max_batch_size=4",
                      "serving.serve.batch_wait_timeout_s=0.5", f"serving.max_pixels={MAX_PIXELS}",
                      f"serving.serve.max_request_mb={MAX_REQUEST_MB}")
    url = start_serving(config)
    try:
        yield config, url.rstrip("/"), port
    finally:
        serve.shutdown()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(url: str, body: bytes, content_type: str = "image/png") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _multipart(image: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_health_route_lists_the_budgets(served):
    _, url, _ = served
    with urllib.request.urlopen(f"{url}/healthz", timeout=60) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok" and health["budgets"] == sorted(BUDGETS)
    assert health["default_budget"] == "layers_3"


def test_answers_equal_the_predictor_for_several_images_and_budgets(served):
    """Each image alone through HTTP (raw body and multipart) against Predictor on the same decoded image."""
    from pycocotools import mask as mask_utils

    config, url, _ = served
    predictor = Predictor.from_run(config)
    categories = resolve_categories(config)
    images = sample_images()[:4]
    for budget in BUDGETS:
        expected = predictor.predict(images, budget=budget)
        for index, (image, reference) in enumerate(zip(images, expected)):
            if index % 2:
                body, content_type = _multipart(_png(image), {"budget": budget})
                status, answer = _post(url, body, content_type)
            else:
                status, answer = _post(f"{url}?budget={budget}", _png(image))
            assert status == 200, answer
            assert answer["budget"] == budget and answer["depth"] == reference.depth == PLANTED[budget][index]
            assert answer["total_gflops"] == pytest.approx(reference.total_gflops)
            ids, segments = reference.panoptic
            got = {s["id"]: s for s in answer["panoptic"]["segments"]}
            assert sorted(got) == sorted(s["id"] for s in segments if (ids == s["id"]).any())
            for segment in segments:
                if segment["id"] in got:
                    mask = mask_utils.decode({**got[segment["id"]]["mask"],
                                              "counts": got[segment["id"]]["mask"]["counts"].encode()})
                    assert got[segment["id"]]["category_id"] == categories[segment["category_id"]]["id"]
                    assert (mask.astype(bool) != (ids == segment["id"]).numpy()).sum() <= 2
            scores = [entry["score"] for entry in answer["instances"]]
            np.testing.assert_allclose(scores, reference.instances.scores.numpy(), rtol=1e-4, atol=1e-6)


def test_concurrent_requests_are_batched_and_grouped_by_budget(served):
    _, url, _ = served
    images = sample_images()
    jobs = [(f"{url}?budget={'layers_3' if i % 3 else 'layers_5'}", _png(images[i])) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda job: _post(*job), jobs))
    assert all(status == 200 for status, _ in answers), answers
    assert max(answer["batch_size"] for _, answer in answers) > 1
    for i, (_, answer) in enumerate(answers):
        budget = "layers_3" if i % 3 else "layers_5"
        assert answer["budget"] == budget and answer["depth"] == PLANTED[budget][i]


def test_default_budget_fixed_depth_and_png_masks(served):
    _, url, _ = served
    image = sample_images()[1]
    status, answer = _post(url, _png(image))
    assert status == 200 and answer["budget"] == "layers_3" and answer["depth"] == PLANTED["layers_3"][1]
    status, answer = _post(f"{url}?depth=6&masks=png", _png(image))
    assert status == 200 and answer["depth"] == 6 and answer["budget"] is None
    import base64

    from ecom2f.data.image_io import rgb_to_id

    ids = rgb_to_id(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["panoptic"]["png"])))))
    assert ids.shape == image.shape[:2]
    assert sorted(set(np.unique(ids)) - {0}) == sorted(s["id"] for s in answer["panoptic"]["segments"])


def test_bad_requests_get_a_status_and_a_message(served):
    _, url, _ = served
    status, answer = _post(url, b"definitely not an image")
    assert status == 400 and "cannot decode the image" in answer["error"]
    status, answer = _post(f"{url}?budget=layers_9", _png(sample_images()[0]))
    assert status == 400 and "unknown budget 'layers_9'" in answer["error"]
    assert "layers_3, layers_5" in answer["error"]
    status, answer = _post(f"{url}?depth=7", _png(sample_images()[0]))
    assert status == 400 and "depth 7" in answer["error"]
    status, answer = _post(f"{url}?colour=red", _png(sample_images()[0]))
    assert status == 400 and "unknown request fields" in answer["error"]
    big = np.zeros((200, 200, 3), dtype=np.uint8)  # 40,000 pixels > MAX_PIXELS, a small PNG
    status, answer = _post(url, _png(big))
    assert status == 413 and "serving.max_pixels" in answer["error"]
    status, answer = _post(url, b"\0" * int(MAX_REQUEST_MB * 1024 * 1024 + 10), "application/octet-stream")
    assert status == 413 and "max_request_mb" in answer["error"]


def test_nothing_listens_beyond_loopback(served):
    """Serve's HTTP proxy is bound to 127.0.0.1 only: the machine's other addresses refuse it."""
    import psutil

    _, _, port = served
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port == port]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
