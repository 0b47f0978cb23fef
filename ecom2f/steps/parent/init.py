"""Where step 1's weights start: random, ImageNet backbone weights, or a released Mask2Former.

Fine-tuning a released Mask2Former into a parent costs a fraction of the 368,750
iterations of training one from scratch.
"""

from __future__ import annotations

import os
import tempfile

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.model import BackboneConfig
from ecom2f.errors import MissingFileError
from ecom2f.modeling import EarlyExitMask2Former, ModelConfig
from ecom2f.modeling.backbone import build_backbone, load_backbone_weights

# Fields a Mask2Former checkpoint's architecture must share with the run's model section.
_ARCHITECTURE_FIELDS = (
    "backbone.name",
    "pixel_decoder.conv_dim",
    "pixel_decoder.mask_dim",
    "pixel_decoder.encoder_layers",
    "pixel_decoder.heads",
    "pixel_decoder.ffn_dim",
    "decoder.hidden_dim",
    "decoder.num_queries",
    "decoder.layers",
    "decoder.ffn_dim",
    "num_classes",
)


def _field(config: ModelConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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
        from ecom2f.modeling.d2_config import model_config_from_d2

        for name in ("mask2former_checkpoint", "mask2former_config"):
            if not storage.exists(getattr(init, name)):
                raise MissingFileError(f"parent.init.{name} {getattr(init, name)!r} does not exist")
        with tempfile.TemporaryDirectory() as directory:
            released = model_config_from_d2(_local_copy(init.mask2former_config, directory))
        different = [
            f"{name}: checkpoint {_field(released, name)!r} vs model {_field(config.model, name)!r}"
            for name in _ARCHITECTURE_FIELDS
            if _field(released, name) != _field(config.model, name)
        ]
        if different:
            raise ValueError(
                "parent.init.mask2former_config describes another architecture than the model section; "
                "set the model section to match it:\n  " + "\n  ".join(different)
            )


def initialize_parent(model: EarlyExitMask2Former, config: Config) -> None:
    """Loads the released Mask2Former weights when ``parent.init.mode`` asks for them.

    ``scratch`` and ``backbone`` need nothing here: ``build_model`` already loaded
    ``model.backbone.weights`` when set. The gate is not trained in step 1 and keeps its
    initialisation when the checkpoint has none.
    """
    init = config.parent.init
    if init.mode != "mask2former":
        return
    from ecom2f.modeling.mask2former_checkpoint import load_into, load_mask2former_state_dict

    with tempfile.TemporaryDirectory() as directory:
        source = load_mask2former_state_dict(_local_copy(init.mask2former_checkpoint, directory))
    load_into(model, source)
