"""Where step 1's weights start: random, ImageNet backbone weights, or a released Mask2Former
(detectron2 / ECO-M2F checkpoint, or a transformers checkpoint folder from the Hugging Face Hub).

Fine-tuning a released Mask2Former into a parent costs a fraction of the 368,750
iterations of training one from scratch. A released checkpoint is checked against the run's
``model`` section before Ray starts: the section must describe the checkpoint's network (the
error lists the ``model.*`` overrides that make it so), so the configuration every worker
rebuilds is the one the run records.
"""

from __future__ import annotations

import logging
import os
import tempfile

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.model import BackboneConfig
from ecom2f.errors import BadInputError, MissingFileError
from ecom2f.modeling import EarlyExitMask2Former
from ecom2f.modeling.backbone import build_backbone, load_backbone_weights
from ecom2f.modeling.model_compat import architecture_differences, as_overrides

log = logging.getLogger(__name__)


def _local_copy(uri: str, directory: str) -> str:
    if not storage.is_s3(uri):
        return uri
    local = os.path.join(directory, os.path.basename(uri))
    storage.download_file(uri, local)
    return local


def check_backbone_weights(section: BackboneConfig) -> None:
    """Loads ``section.weights`` into a CPU build of the backbone, so that a wrong, truncated or
    unsafe file fails here, in seconds, rather than on every worker after Ray has started."""
    weights = section.weights
    if not weights:
        raise ValueError(
            "parent.init.mode 'backbone' needs model.backbone.weights: a local torchvision/timm state dict "
            "or a detectron2/Mask2Former .pkl"
        )
    if storage.is_s3(weights):
        # build_model reads the file on every worker and never downloads, so a URI would only fail there.
        raise ValueError(
            f"model.backbone.weights {weights!r} is an s3:// URI, but the model is built from a local file on "
            "every worker; copy it to a path that every node can read (e.g. `aws s3 cp` into ./weights/) and "
            "set model.backbone.weights to that path"
        )
    if not os.path.isfile(weights):
        raise MissingFileError(f"model.backbone.weights {weights!r} does not exist; give the path of a local file")
    backbone = build_backbone(section.model_copy(update={"weights": None}))
    try:
        load_backbone_weights(backbone, weights)
    except ValueError as error:
        raise type(error)(f"model.backbone.weights ({section.name}): {error}") from error


def check_parent_init(config: Config) -> None:
    """Fails fast (before Ray starts) on missing files or an architecture that cannot load."""
    init = config.parent.init
    if init.mode == "backbone":
        check_backbone_weights(config.model.backbone)
    if init.mode == "mask2former":
        _check_mask2former(config)
    if init.mode == "huggingface":
        _check_huggingface(config)


def _architecture_error(what: str, released, config: Config) -> None:
    different = architecture_differences(released, config.model)
    if different:
        raise ValueError(
            f"{what} describes another architecture than the model section; set the model section to match it:\n  "
            + "\n  ".join(different)
            + "\n  (as overrides: " + " ".join(as_overrides(released, config.model)) + ")"
        )


def _check_mask2former(config: Config) -> None:
    from ecom2f.modeling.d2_config import model_config_from_d2

    init = config.parent.init
    for name in ("mask2former_checkpoint", "mask2former_config"):
        if not storage.exists(getattr(init, name)):
            raise MissingFileError(f"parent.init.{name} {getattr(init, name)!r} does not exist")
    with tempfile.TemporaryDirectory() as directory:
        # A detectron2 YAML has no thing/stuff split: the model section's is the one the run uses.
        released = model_config_from_d2(_local_copy(init.mask2former_config, directory), config.model.num_things)
    _architecture_error("parent.init.mask2former_config", released, config)


# ----------------------------------------------------------------------------- transformers checkpoints
def fetch_huggingface_folder(uri: str, directory: str, weights: bool = True) -> str:
    """A local folder with the files of the transformers checkpoint at ``uri`` that an import reads
    (``uri`` itself when local); the weights only when ``weights``."""
    from ecom2f.modeling.huggingface_checkpoint import CONFIG_FILE, WEIGHT_FILES, hf_checkpoint_files

    names = {os.path.basename(item) for item in storage.list_uris(uri)}
    if CONFIG_FILE not in names:
        raise MissingFileError(
            f"{uri!r} has no {CONFIG_FILE}: give the folder of a transformers "
            "Mask2Former checkpoint (config.json + model.safetensors or pytorch_model.bin)"
        )
    if not names & set(WEIGHT_FILES):
        raise MissingFileError(f"{uri} has {CONFIG_FILE} but no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not storage.is_s3(uri):
        return uri
    wanted = [name for name in hf_checkpoint_files(names) if weights or name not in WEIGHT_FILES]
    for name in wanted:
        storage.download_file(storage.join(uri, name), os.path.join(directory, name))
    index = next((name for name in wanted if name.endswith(".index.json")), None)
    if index:  # sharded weights: the index names the shards
        import json

        with open(os.path.join(directory, index)) as handle:
            for shard in sorted(set(json.load(handle).get("weight_map", {}).values())):
                storage.download_file(storage.join(uri, shard), os.path.join(directory, shard))
    return directory


def _released_huggingface(config: Config, folder: str):
    """The checkpoint's model section and classes; ``model.num_things`` splits a label set ecom2f does not know."""
    from ecom2f.modeling.class_info import ClassInfo
    from ecom2f.modeling.huggingface_checkpoint import huggingface_model_config, read_huggingface_folder
    from ecom2f.modeling.huggingface_config import class_names_from_hf

    found = read_huggingface_folder(folder, weights=False)
    unknown = found.sidecar is None and ClassInfo.from_names(class_names_from_hf(found.config)).thing_ids is None
    if unknown:
        log.info("parent.init.huggingface_checkpoint: classes not recognised; things are the first "
                 "model.num_things = %d", config.model.num_things)
    try:
        return huggingface_model_config(found, config.model.num_things if unknown else None)
    except BadInputError as error:
        raise BadInputError(f"parent.init.huggingface_checkpoint {config.parent.init.huggingface_checkpoint!r}: "
                            f"{error}") from None


def _check_huggingface(config: Config) -> None:
    init = config.parent.init
    with tempfile.TemporaryDirectory() as directory:
        folder = fetch_huggingface_folder(init.huggingface_checkpoint, directory, weights=False)
        released, classes = _released_huggingface(config, folder)
    _architecture_error(f"parent.init.huggingface_checkpoint {init.huggingface_checkpoint!r}", released, config)
    if init.check_class_names:
        check_classes_match_dataset(classes, config)


def check_model_fits_classes(config: Config, metadata) -> None:
    """data.train's classes are the model's: as many, with the things at the same ids.

    A mismatch would train a classifier whose rows mean other classes, or merge thing
    instances as stuff at inference; both only show as a bad PQ hours later.
    """
    model = config.model
    if len(metadata.class_names) != model.num_classes:
        raise BadInputError(f"data.train {config.data.train!r} has {len(metadata.class_names)} classes but "
                            f"model.num_classes is {model.num_classes}: set model.num_classes={len(metadata.class_names)}")
    if metadata.thing_classes and tuple(metadata.thing_classes) != model.thing_ids:
        things = list(metadata.thing_classes)
        fix = (f"model.num_things={len(things)}" if things == list(range(len(things)))
               else f"model.thing_classes={things} and model.num_things={len(things)}")
        raise BadInputError(f"data.train {config.data.train!r} has its things at class ids {things}, the model at "
                            f"{list(model.thing_ids)}: set {fix}")


def check_classes_match_dataset(classes, config: Config) -> None:
    """The checkpoint's classes are data.train's, in the same order, with the same things.

    Synthetic data (``data.synthetic``) is generated after this check, so it is not compared.
    """
    if config.data.synthetic is not None:
        log.info("parent.init: data.synthetic is generated later; the checkpoint's class names are not compared")
        return
    from ecom2f.config.data import dataset_spec
    from ecom2f.data import build_dataset

    metadata = build_dataset(dataset_spec(config.data.train), root=config.data.root, check_only=True).metadata
    names = list(metadata.class_names)
    if len(names) != classes.num_classes:
        raise BadInputError(f"parent.init.huggingface_checkpoint has {classes.num_classes} classes, data.train "
                            f"{len(names)}: train on a dataset with the checkpoint's classes")
    check_model_fits_classes(config, metadata)
    numbered = names == [str(i) for i in range(len(names))]  # semantic sets given by a count have no names
    different = [f"class {i}: checkpoint {a!r} vs data.train {b!r}"
                 for i, (a, b) in enumerate(zip(classes.names, names)) if a != b]
    if different and not numbered:
        raise BadInputError(
            f"the checkpoint's classes differ from data.train's ({len(different)} of {len(names)}: "
            + "; ".join(different[:5]) + "); another order would train the wrong classifier rows. Train on a "
            "dataset with the checkpoint's classes, or set parent.init.check_class_names=false if only the names differ"
        )


def initialize_parent(model: EarlyExitMask2Former, config: Config) -> None:
    """Loads the released weights when ``parent.init.mode`` asks for them.

    ``scratch`` and ``backbone`` need nothing here: ``build_model`` already loaded
    ``model.backbone.weights`` when set. The gate is not trained in step 1 and keeps its
    initialisation when the checkpoint has none.
    """
    init = config.parent.init
    if init.mode == "mask2former":
        from ecom2f.modeling.mask2former_checkpoint import load_into, load_mask2former_state_dict

        with tempfile.TemporaryDirectory() as directory:
            source = load_mask2former_state_dict(_local_copy(init.mask2former_checkpoint, directory))
        load_into(model, source)
    elif init.mode == "huggingface":
        from ecom2f.modeling.huggingface_checkpoint import load_huggingface_into, read_huggingface_folder

        with tempfile.TemporaryDirectory() as directory:
            found = read_huggingface_folder(fetch_huggingface_folder(init.huggingface_checkpoint, directory))
        report = load_huggingface_into(model, found)
        log.info("parent.init: %s", " | ".join(report.lines()))
