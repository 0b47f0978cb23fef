"""ecom2f.storage on local paths: round trips, atomicity, listing, deletion, errors."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecom2f import storage
from ecom2f.storage import RunLayout, StorageError, StorageNotFoundError


def test_bytes_and_text_round_trip_create_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "blob.bin"
    payload = bytes(range(256)) * 3
    storage.write_bytes(target, payload)
    assert storage.read_bytes(target) == payload
    storage.write_text(str(tmp_path / "t.txt"), "héllo\n")
    assert storage.read_text(f"file://{tmp_path}/t.txt") == "héllo\n"


def test_overwrite_is_atomic_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "config.yaml"
    storage.write_bytes(target, b"old")
    # A writer that fails half-way must leave the old content and no temporary file.
    with pytest.raises(RuntimeError, match="disk full"):
        with storage.files._atomic_local_target(target) as temporary:
            temporary.write_bytes(b"half of the new cont")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    storage.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]


def test_files_upload_and_download(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3000))
    storage.upload_file(source, tmp_path / "out" / "copy.bin")
    storage.download_file(tmp_path / "out" / "copy.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


def test_listing_exists_and_delete(tmp_path):
    for name in ("a.txt", "sub/b.txt", "sub/deeper/c.txt"):
        storage.write_text(tmp_path / name, name)
    assert storage.list_uris(tmp_path) == [f"{tmp_path}/a.txt", f"{tmp_path}/sub/"]
    assert storage.list_uris(tmp_path, recursive=True) == [
        f"{tmp_path}/a.txt",
        f"{tmp_path}/sub/b.txt",
        f"{tmp_path}/sub/deeper/c.txt",
    ]
    assert storage.list_uris(tmp_path / "missing") == []
    assert storage.exists(tmp_path / "sub") and storage.exists(tmp_path / "a.txt")
    assert not storage.exists(tmp_path / "nope.txt")

    with pytest.raises(StorageError, match=r"it is a directory; pass recursive=True"):
        storage.delete(tmp_path / "sub")
    assert storage.delete(tmp_path / "sub", recursive=True) == 2
    assert storage.delete(tmp_path / "a.txt") == 1
    assert storage.delete(tmp_path / "a.txt") == 0  # missing is not an error
    assert storage.list_uris(tmp_path) == []


def test_missing_file_and_bad_scheme_errors(tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(StorageNotFoundError) as raised:
        storage.read_bytes(missing)
    assert str(raised.value) == f"cannot read {missing}: no such file"
    assert isinstance(raised.value, FileNotFoundError)
    with pytest.raises(ValueError) as raised:
        storage.read_bytes("gs://bucket/x")
    assert str(raised.value) == (
        "unsupported storage URI 'gs://bucket/x': use a local path, file:///abs/path or s3://bucket/key"
    )


def test_join():
    assert storage.join("s3://bucket/run/", "parent", "/ckpt/") == "s3://bucket/run/parent/ckpt"
    assert storage.join("s3://bucket", "x") == "s3://bucket/x"
    assert storage.join("/tmp/runs", "r1", "config.yaml") == "/tmp/runs/r1/config.yaml"


def test_pyarrow_parquet_round_trip_on_local_filesystem(tmp_path):
    filesystem, path = storage.pyarrow_filesystem(tmp_path / "rows")
    assert path == str((tmp_path / "rows").resolve())
    table = pa.table({"image_id": [1, 2, 3], "exit": [2, 4, 6], "pq": [0.5, 0.25, 0.75]})
    filesystem.create_dir(path)
    pq.write_table(table, f"{path}/part-0.parquet", filesystem=filesystem)
    assert pq.read_table(f"{path}/part-0.parquet", filesystem=filesystem).equals(table)


def test_run_layout_paths_local_and_s3(tmp_path):
    layout = RunLayout(str(tmp_path), "r1")
    layout.create()
    assert layout.config == f"{tmp_path}/r1/config.yaml"
    assert storage.list_uris(layout.run_uri) == [f"{tmp_path}/r1/{name}/" for name in sorted(RunLayout.SUBDIRECTORIES)]
    s3 = RunLayout("s3://bucket/prefix/", "r1")
    assert (s3.config, s3.parent, s3.depth, s3.gates, s3.eval, s3.report) == (
        "s3://bucket/prefix/r1/config.yaml",
        "s3://bucket/prefix/r1/parent",
        "s3://bucket/prefix/r1/depth",
        "s3://bucket/prefix/r1/gates",
        "s3://bucket/prefix/r1/eval",
        "s3://bucket/prefix/r1/report",
    )
    with pytest.raises(ValueError) as raised:
        RunLayout("s3://bucket", "a/b")
    assert str(raised.value) == "run name 'a/b': must be a non-empty name without '/' (e.g. 'coco_r50_parent')"


def test_local_preflight_passes_and_cleans_up(tmp_path):
    assert storage.preflight(tmp_path / "runs" / "r1") < 5.0
    assert storage.list_uris(tmp_path / "runs" / "r1") == []


def test_local_preflight_fails_clearly_when_the_root_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(storage.StoragePreflightError) as raised:
        storage.preflight(blocker / "run")
    assert str(raised.value) == (
        f"storage preflight of {blocker / 'run'} failed: NotADirectoryError: [Errno 20] Not a directory: "
        f"'{blocker / 'run'}'; check that the path is writable"
    )


def test_local_directory_copy(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.bin").write_bytes(b"x")
    (tmp_path / "src" / "y.bin").write_bytes(b"y")
    assert storage.upload_dir(tmp_path / "src", tmp_path / "dst") == 2
    assert storage.download_dir(tmp_path / "dst", tmp_path / "back") == 2
    assert (tmp_path / "back" / "a" / "x.bin").read_bytes() == b"x"
    with pytest.raises(StorageNotFoundError, match=r"no such directory$"):
        storage.upload_dir(tmp_path / "missing", tmp_path / "dst")
