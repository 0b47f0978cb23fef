"""``ecom2f convert SRC DST --to {ecom2f,mask2former,huggingface}``: one converter for every format.

The source's format is read from its files: a detectron2 ``.pkl`` / Mask2Former ``.pth``
(ECO-M2F's carry the gate; the detectron2 YAML is ``--config`` or the ``.yaml`` beside it),
a transformers Mask2Former folder (``config.json``), or an ecom2f run folder
(``config.yaml`` + ``parent/model_final.pth``). SRC and DST may be ``s3://`` URIs. The
command prints what was mapped, what was left at its initialisation and what was ignored,
and why.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from ecom2f.errors import BadInputError, MissingFileError

TARGETS = ("ecom2f", "mask2former", "huggingface")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``convert``."""
    convert = subparsers.add_parser(
        "convert", help="convert a checkpoint between ecom2f, Mask2Former/ECO-M2F and Hugging Face formats",
        description="SRC: a detectron2 .pkl or Mask2Former/ECO-M2F .pth, a transformers Mask2Former folder, or an "
                    "ecom2f run folder (local or s3://). DST: --to ecom2f writes a run folder (config.yaml, "
                    "parent/model_final.pth) whose step 1 is done; --to mask2former writes DST (.pth) and its "
                    "detectron2 YAML beside it; --to huggingface writes a folder Mask2FormerForUniversalSegmentation"
                    ".from_pretrained loads (the gate and the model section beside it, in ecom2f files).",
    )
    convert.add_argument("src", metavar="SRC", help="the checkpoint to read")
    convert.add_argument("dst", metavar="DST", help="where to write (must not exist yet)")
    convert.add_argument("--to", required=True, choices=TARGETS, help="the format to write")
    convert.add_argument("--config", metavar="YAML", help="a Mask2Former SRC's detectron2 YAML (default: SRC's "
                                                          "name with .yaml)")
    convert.add_argument("--num-things", type=int, metavar="N",
                         help="how many leading classes are things, when SRC does not say (detectron2 checkpoints "
                              "of other than COCO's 133 classes, label sets ecom2f does not know)")
    convert.add_argument("--class-names", metavar="FILE", help="a text file with one class name per line, to name "
                                                               "the classes when SRC does not")
    convert.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Reads SRC, writes DST, prints both reports."""
    from ecom2f import storage

    if storage.exists(args.dst):
        raise BadInputError(f"{args.dst} already exists; give a new path to write to")
    with tempfile.TemporaryDirectory(prefix="ecom2f-convert-") as directory:
        source = _fetch(args.src, os.path.join(directory, "src"))
        config_yaml = _fetch(args.config, os.path.join(directory, "config")) if args.config else None
        model, classes, read_report, description = _read(source, config_yaml, args.num_things)
        if args.class_names:
            classes = _named(model, classes, args.class_names)
        print(f"source: {description} ({args.src})")
        print("\n".join(read_report.lines()))
        local_dst = os.path.join(directory, "out", os.path.basename(args.dst.rstrip("/"))) \
            if storage.is_s3(args.dst) else args.dst
        write_report = _write(model, classes, local_dst, args.to, args.dst)
        if storage.is_s3(args.dst):
            _upload(local_dst, args.dst)
        print("\n".join(write_report.lines()))
    print(f"wrote {args.to}: {args.dst}")
    return 0


# ----------------------------------------------------------------------------- reading
def _fetch(uri: str, local: str) -> str:
    """A local path for ``uri``: itself, or a download of the object or of the files a conversion reads."""
    from ecom2f import storage

    if not storage.is_s3(uri):
        if not os.path.exists(uri):
            raise MissingFileError(f"{uri} does not exist")
        return uri
    listed = storage.list_uris(uri, recursive=True)
    if not listed:
        if not storage.exists(uri):
            raise MissingFileError(f"{uri} does not exist")
        target = os.path.join(local, os.path.basename(uri))
        storage.download_file(uri, target)
        beside = os.path.splitext(uri)[0] + ".yaml"  # a Mask2Former checkpoint's detectron2 YAML
        if uri.endswith((".pkl", ".pth", ".pt")) and storage.exists(beside):
            storage.download_file(beside, os.path.splitext(target)[0] + ".yaml")
        return target
    from ecom2f.modeling.huggingface_checkpoint import CONFIG_FILE

    if storage.join(uri, CONFIG_FILE) in listed:
        from ecom2f.steps.parent.init import fetch_huggingface_folder

        return fetch_huggingface_folder(uri, local)
    remote = _run_layout(uri)
    here = _run_layout(os.path.join(local, remote.run))
    for source, target in ((remote.config, here.config), (remote.parent_weights, here.parent_weights),
                           (remote.parent_classes, here.parent_classes)):
        if storage.exists(source):
            storage.download_file(source, target)
    return here.run_uri


def _run_layout(path: str):
    """The run whose folder is ``path`` (local or s3://)."""
    from ecom2f import storage
    from ecom2f.storage import RunLayout

    path = path.rstrip("/") if storage.is_s3(path) else os.path.abspath(path.rstrip("/"))
    root, run = path.rsplit("/", 1)
    return RunLayout(root, run)


def _is_run(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    layout = _run_layout(path)
    return os.path.isfile(layout.config) and os.path.isfile(layout.parent_weights)


def _read(path: str, config_yaml: str | None, num_things: int | None):
    """``(model, classes or None, report, description)`` of a local source."""
    from ecom2f.modeling.mask2former_checkpoint import CheckpointMismatchError

    try:
        return _read_any(path, config_yaml, num_things)
    except CheckpointMismatchError as error:  # also a ValueError; its message lists the keys
        raise BadInputError(f"{path}: {error}") from None


def _read_any(path: str, config_yaml: str | None, num_things: int | None):
    if _is_run(path):
        return _read_run(path, num_things)
    from ecom2f.modeling.checkpoint_formats import detect_checkpoint, read_mask2former
    from ecom2f.modeling.huggingface_checkpoint import import_huggingface

    kind, description = detect_checkpoint(path)
    if kind == "huggingface":
        model, classes, report = import_huggingface(path, num_things)
        return model, classes, report, description
    model, report = read_mask2former(path, config_yaml, num_things)
    return model, None, report, description


def _read_run(path: str, num_things: int | None):
    import json

    from ecom2f.config import load_config
    from ecom2f.modeling import load_parent_weights
    from ecom2f.modeling.class_info import ClassInfo
    from ecom2f.modeling.conversion_report import ConversionReport

    layout = _run_layout(path)
    config = load_config(layout.config)
    if num_things is not None and num_things != config.model.num_things:
        raise BadInputError(f"--num-things {num_things} contradicts the run's model.num_things "
                            f"{config.model.num_things}; leave it out for an ecom2f run")
    try:
        model = load_parent_weights(config.model, layout.parent_weights)
    except ValueError as error:
        raise BadInputError(f"{path}: {error}") from None
    classes_path = layout.parent_classes
    classes = None
    if os.path.isfile(classes_path):
        with open(classes_path) as handle:
            classes = ClassInfo.from_json(json.load(handle))
    report = ConversionReport(f"ecom2f run ({path})", "ecom2f")
    report.mapped = sorted(model.state_dict())
    return model, classes, report, "ecom2f run (parent weights and model section)"


def _named(model, classes, names_file: str):
    from ecom2f.modeling.class_info import ClassInfo

    with open(names_file) as handle:
        names = [line.strip() for line in handle if line.strip()]
    if len(names) != model.config.num_classes:
        raise BadInputError(f"{names_file} names {len(names)} classes; the model has {model.config.num_classes}")
    things = classes.thing_ids if classes else model.config.thing_ids
    return ClassInfo(tuple(names), things, None)


# ----------------------------------------------------------------------------- writing
def _write(model, classes, dst: str, target: str, final: str):
    """Writes to the local path ``dst``; ``final`` is where it will live (a run's config names its root)."""
    if target == "huggingface":
        from ecom2f.modeling.huggingface_checkpoint import export_huggingface

        return export_huggingface(model, dst, classes)
    if target == "mask2former":
        from ecom2f.modeling.checkpoint_formats import write_mask2former

        return write_mask2former(model, dst)
    return _write_run(model, classes, dst, final)


def _write_run(model, classes, dst: str, final: str | None = None):
    """A run folder whose step 1 is done: ``config.yaml`` (the model section, defaults elsewhere;
    its storage section names ``final``, default ``dst``), the parent's weights and the classes."""
    import io
    import json

    import torch

    from ecom2f import storage
    from ecom2f.config import Config
    from ecom2f.config.loading import save_config
    from ecom2f.modeling.conversion_report import ConversionReport

    layout, home = _run_layout(dst), _run_layout(final or dst)
    config = Config(model=model.config, storage={"root": home.root, "run": home.run})
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    storage.write_bytes(layout.parent_weights, buffer.getvalue())
    if classes is not None:
        storage.write_text(layout.parent_classes, json.dumps(classes.to_json(), indent=2))
    save_config(config, layout.config, source="ecom2f convert")
    report = ConversionReport("ecom2f", f"ecom2f run ({final or dst})")
    report.mapped = sorted(model.state_dict())
    report.notes.append(f"{home.config} holds the model section and defaults elsewhere: set data, solver and "
                        "ray before running the later steps on it")
    return report


def _upload(local: str, uri: str) -> None:
    from ecom2f import storage

    if os.path.isdir(local):
        storage.upload_dir(local, uri)
        return
    storage.upload_file(local, uri)
    beside = os.path.splitext(local)[0] + ".yaml"  # a Mask2Former .pth's detectron2 YAML
    if os.path.isfile(beside):
        storage.upload_file(beside, os.path.splitext(uri)[0] + ".yaml")
