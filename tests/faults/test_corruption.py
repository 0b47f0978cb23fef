"""Corrupted artifacts (issue 17 section 4): every artifact a later step reads is checked against the
checksum its step's manifest records; a truncated or altered file fails with one line naming the
file and the step to rerun; a damaged latest training checkpoint falls back to the one before."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ecom2f import storage
from ecom2f.config.model import GateConfig
from ecom2f.errors import UserError
from ecom2f.modeling.gate import Gate
from ecom2f.steps.depth.table import read_depth_table, shard_uri
from ecom2f.steps.gate.store import load_gate, write_gate
from ecom2f.steps.parent.job import read_parent_weights, write_parent_manifest
from ecom2f.storage.checksums import CHECKSUMS, digest
from ecom2f.storage.errors import CorruptArtifactError
from ecom2f.storage.layout import SUCCESS, RunLayout
from tests.steps.test_gate_search import planted_table, write_depth_table


def _truncate(uri: str, keep: float = 0.5) -> None:
    data = storage.read_bytes(uri)
    storage.write_bytes(uri, data[: int(len(data) * keep)])


def _flip_byte(uri: str) -> None:
    """Same size, one byte changed: what a checksum catches and a size check does not."""
    data = bytearray(storage.read_bytes(uri))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(uri, bytes(data))


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert isinstance(error, UserError) and "\n" not in message  # the CLI prints it as one line
    return message


@pytest.fixture(params=["local", "s3"])
def run_root(request, tmp_path):
    return f"{request.getfixturevalue('s3_bucket')}/runs" if request.param == "s3" else str(tmp_path / "runs")


def test_parent_weights(run_root):
    layout = RunLayout(run_root, "demo")
    weights = io.BytesIO()
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, weights)
    storage.write_bytes(layout.parent_weights, weights.getvalue())
    write_parent_manifest(layout, digest(weights.getvalue()), "checkpoint_x")
    assert read_parent_weights(layout) == weights.getvalue()

    _flip_byte(layout.parent_weights)
    with pytest.raises(CorruptArtifactError) as altered:
        read_parent_weights(layout)
    message = _one_line(altered.value)
    assert message.startswith(f"{layout.parent_weights} is corrupt (altered: sha256")
    assert layout.parent_success in message and "rerun step 1 (`ecom2f train-parent`" in message
    _truncate(layout.parent_weights)
    with pytest.raises(CorruptArtifactError, match=r"is corrupt \(\d+ bytes where .* records \d+ \(truncated\?\)"):
        read_parent_weights(layout)


def _finished_table(depth_uri: str) -> None:
    """A depth table as step 2 leaves it: shards, then the manifest with every file's checksum."""
    write_depth_table(planted_table(40, channels=4), depth_uri, shards=3)
    digests: dict = {}
    read_depth_table(depth_uri, digests=digests)
    manifest = json.loads(storage.read_text(storage.join(depth_uri, SUCCESS)))
    storage.write_text(storage.join(depth_uri, SUCCESS), json.dumps({**manifest, CHECKSUMS: digests}))
    assert sorted(digests) == [f"{kind}/part-0000{s}.parquet" for kind in ("features", "rows") for s in range(3)]


def test_depth_shards(run_root):
    depth = RunLayout(run_root, "demo").depth
    _finished_table(depth)
    assert len(read_depth_table(depth)) == 40

    rows = shard_uri(depth, "rows", 1)
    original = storage.read_bytes(rows)
    _truncate(rows)
    with pytest.raises(CorruptArtifactError) as truncated:
        read_depth_table(depth, features=False)  # the labels and the report read without features
    message = _one_line(truncated.value)
    assert message.startswith(f"{rows} is corrupt (") and "(truncated?)" in message and "rerun step 2 (`ecom2f build-depth`" in message

    # A valid parquet file with other values (what a checksum catches and a schema check cannot).
    table = pq.read_table(io.BytesIO(original))
    table = table.set_column(table.schema.get_field_index("pq"), "pq", pa.array(
        table["pq"].to_numpy() * 0 + 1, pa.float32()))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(rows, sink.getvalue())
    with pytest.raises(CorruptArtifactError, match=r"part-00001\.parquet is corrupt \(\d+ bytes where"):
        read_depth_table(depth)
    storage.write_bytes(rows, original)
    features = shard_uri(depth, "features", 2)
    _flip_byte(features)
    with pytest.raises(CorruptArtifactError, match=r"features/part-00002\.parquet is corrupt"):
        read_depth_table(depth)  # step 3 reads the features
    assert len(read_depth_table(depth, features=False)) == 40  # the rows alone are intact

    storage.delete(features)
    with pytest.raises(CorruptArtifactError, match=r"features/part-00002\.parquet is missing"):
        read_depth_table(depth)


def test_gate_weights_and_metadata(run_root):
    layout = RunLayout(run_root, "demo")
    gate = Gate(8, GateConfig(exits=[2, 4, 6]))
    files = write_gate(layout.gate("layers_4"), gate, {"channels": 8, "beta": 0.1})
    assert set(files) == {"gate.pt", "gate.json"}
    expected = {name: checksum for name, checksum in files.items()}
    loaded, meta = load_gate(layout.gate("layers_4"), expected)
    assert meta["weights_checksum"] == files["gate.pt"]
    for name, value in gate.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)

    weights, metadata = (storage.join(layout.gate("layers_4"), name) for name in ("gate.pt", "gate.json"))
    original = storage.read_bytes(weights)
    _truncate(weights)
    with pytest.raises(CorruptArtifactError) as truncated:
        load_gate(layout.gate("layers_4"))  # even without step 3's manifest: gate.json records the weights
    message = _one_line(truncated.value)
    assert message.startswith(f"{weights} is corrupt (") and "rerun step 3 (`ecom2f tune-gate`" in message
    storage.write_bytes(weights, original)
    text = storage.read_text(metadata).replace('"beta": 0.1', '"beta": 0.9')
    storage.write_text(metadata, text)
    with pytest.raises(CorruptArtifactError, match="gate.json is corrupt"):
        load_gate(layout.gate("layers_4"), expected)


def test_evaluation_tables(tmp_path, tiny_data_root):
    import pandas as pd

    from ecom2f.steps.evaluate.job import _parquet, _write, load_per_image, load_summary
    from tests.steps.conftest import tiny_config

    config = tiny_config(tiny_data_root, tmp_path / "runs")
    layout = config.storage.layout()
    written: dict = {}
    _write(layout.eval_per_image, _parquet(pd.DataFrame({"image_id": [1, 2], "pq": [0.5, 0.25]})), written)
    _write(layout.eval_summary, _parquet(pd.DataFrame({"variant": ["fixed_6"], "pq": [0.375]})), written)
    storage.write_text(layout.eval_success, json.dumps({CHECKSUMS: written}))
    assert load_summary(config)["pq"].tolist() == [0.375]
    _truncate(layout.eval_per_image, keep=0.9)
    with pytest.raises(CorruptArtifactError) as truncated:
        load_per_image(config)  # what the report reads
    message = _one_line(truncated.value)
    assert message.startswith(f"{layout.eval_per_image} is corrupt") and "rerun the evaluation" in message


# ----------------------------------------------------------------------------- step 1's checkpoints


class _Session:
    """A LocalSession that also offers the checkpoints before the latest (as the Ray Train session does)."""

    def __new__(cls, root):
        from ecom2f.steps.parent.session import LocalSession

        class WithEarlier(LocalSession):
            def earlier_checkpoints(self):
                return [str(path) for path in reversed(self._checkpoints()[:-1])]

        return WithEarlier(root, keep_last=3)


@pytest.fixture(scope="module")
def process_group():
    from tests import distributed

    with distributed.single_process_group():
        yield


def _weights(session) -> dict:
    return torch.load(f"{session.latest_checkpoint()}/model_final.pth", weights_only=True)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(process_group, tiny_data_root, tmp_path, caplog):
    from ecom2f.modeling import build_model
    from ecom2f.steps.datasets import training_dataset
    from ecom2f.steps.parent import train_parent
    from ecom2f.steps.parent.state import ResumeError, checkpoint_problems
    from tests.steps.conftest import tiny_config

    common = ["parent.checkpoint_period=2", "parent.log_period=1", "ray.num_workers=1", "solver.ims_per_batch=2",
              "solver.lr_schedule.steps=[3]"]
    config = tiny_config(tiny_data_root, tmp_path / "runs", "solver.max_iter=6", *common)
    dataset = training_dataset(config)
    first = tiny_config(tiny_data_root, tmp_path / "runs", "solver.max_iter=4", *common)
    interrupted = _Session(tmp_path / "interrupted")
    train_parent(first, interrupted, dataset)  # checkpoints after iterations 2 and 4
    latest = Path(interrupted.latest_checkpoint())
    assert latest.name.endswith("000000004") and checkpoint_problems(str(latest)) == []
    listed = json.loads((latest / "checksums_rank_0.json").read_text())
    assert {"train_state.json", "rank_0.pt", "model_final.pth"} <= set(listed)
    victim = latest / "rank_0.pt"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated in storage
    expected = f"rank_0.pt differs from its checksum (100 of {listed['rank_0.pt']['bytes']} bytes)"
    assert checkpoint_problems(str(latest)) == [expected]

    resumed = _Session(tmp_path / "interrupted")
    with caplog.at_level("WARNING", logger="ecom2f.steps.parent.state"):
        train_parent(config, resumed, dataset)
    # Iterations 3 and 4 again (a normal restore is exact: tests/steps/test_parent_loop.py), none skipped.
    assert [r["step"] for r in resumed.reported] == [3, 4, 5, 6]
    assert all(r["resumed_from"] == 2 for r in resumed.reported)
    assert [r["samples_consumed"] for r in resumed.reported] == [6, 8, 10, 12]
    assert any("is damaged" in record.getMessage() for record in caplog.records)
    assert set(_weights(resumed)) == set(build_model(config.model).state_dict())

    # Every checkpoint damaged: refused, rather than silently training from scratch.
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "interrupted", broken)
    for checkpoint in broken.glob("checkpoint_*"):
        (checkpoint / "train_state.json").write_text("{")
    with pytest.raises(ResumeError, match="every step-1 checkpoint is damaged.*delete the run's parent/train/"):
        train_parent(config, _Session(broken), dataset)
