"""transformers' Mask2Former ``config.json`` (+ ``preprocessor_config.json``) <-> :class:`ModelConfig`.

Plain JSON both ways: transformers is not needed to read or write them. What transformers'
Mask2Former fixes and ecom2f makes configurable (3 encoder levels res3..res5, 4 sampling
points, GroupNorm with 32 groups, one head count for encoder and decoder) must hold for an
export; a ``config.json`` ecom2f cannot represent (Swin-L, a timm backbone, GELU in the
decoder, ...) is refused with the key that differs.
"""

from __future__ import annotations

from collections.abc import Mapping

from ecom2f.config.model import ModelConfig
from ecom2f.errors import BadInputError
from ecom2f.modeling.class_info import ClassInfo
from ecom2f.modeling.d2_config import criterion_section
from ecom2f.modeling.resnet import RESNET_DEPTHS
from ecom2f.modeling.swin import SWIN_SPECS

__all__ = ["class_names_from_hf", "hf_config_from_model", "hf_preprocessor_config", "model_config_from_hf"]

_STAGES = ["stage1", "stage2", "stage3", "stage4"]
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# transformers' ResNet configs: (layer_type, depths, hidden_sizes) of the torchvision ResNets ecom2f builds.
_RESNETS = {
    "resnet18": ("basic", [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet50": ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]),
    "resnet101": ("bottleneck", [3, 4, 23, 3], [256, 512, 1024, 2048]),
}


def _require(tree: Mapping, key: str, allowed, where: str, default=None) -> None:
    value = tree.get(key, default)
    if isinstance(value, tuple):
        value = list(value)
    if value != allowed:
        raise BadInputError(f"{where}{key} = {value!r}: ecom2f reproduces transformers' Mask2Former only with {allowed!r}")


def class_names_from_hf(config: Mapping) -> tuple[str, ...]:
    """``id2label`` in id order (keys are strings in JSON); generic names when absent."""
    id2label = config.get("id2label") or {}
    if not id2label:
        count = int(config.get("num_labels", 0))
        return tuple(f"LABEL_{i}" for i in range(count))
    ids = sorted(int(key) for key in id2label)
    if ids != list(range(len(ids))):
        raise BadInputError(f"config.json id2label has ids {ids[:5]}...: expected 0..{len(ids) - 1} without gaps")
    return tuple(str(id2label.get(str(i), id2label.get(i))) for i in ids)


def _swin_section(backbone: Mapping) -> dict:
    where = "config.json backbone_config."
    key = (int(backbone.get("embed_dim", 96)), list(backbone.get("depths", [])), list(backbone.get("num_heads", [])))
    name = next((n for n, (dim, depths, heads) in SWIN_SPECS.items() if key == (dim, list(depths), list(heads))), None)
    if name is None:
        raise BadInputError(
            f"{where}embed_dim/depths/num_heads = {key}: not one of ecom2f's Swin backbones "
            f"({', '.join(f'{n} {s[0]}/{list(s[1])}/{list(s[2])}' for n, s in SWIN_SPECS.items())})"
        )
    for field, allowed in (("patch_size", 4), ("mlp_ratio", 4.0), ("qkv_bias", True), ("hidden_act", "gelu"),
                           ("use_absolute_embeddings", False), ("layer_norm_eps", 1e-5), ("num_channels", 3)):
        _require(backbone, field, allowed, where, default=allowed)
    return {"name": name, "swin_window_size": int(backbone.get("window_size", 7)),
            "drop_path_rate": float(backbone.get("drop_path_rate", 0.0))}


def _resnet_section(backbone: Mapping) -> dict:
    where = "config.json backbone_config."
    found = (backbone.get("layer_type"), list(backbone.get("depths", [])), list(backbone.get("hidden_sizes", [])))
    name = next((n for n, spec in _RESNETS.items() if found == (spec[0], spec[1], spec[2])), None)
    if name is None:
        raise BadInputError(f"{where}layer_type/depths/hidden_sizes = {found}: not ResNet-18/50/101 ({_RESNETS})")
    for field, allowed in (("embedding_size", 64), ("downsample_in_first_stage", False), ("hidden_act", "relu"),
                           ("num_channels", 3)):
        _require(backbone, field, allowed, where, default=allowed)
    return {"name": name, "stride_in_1x1": bool(backbone.get("downsample_in_bottleneck", False))}


def _backbone_section(config: Mapping) -> dict:
    backbone = config.get("backbone_config")
    if config.get("use_timm_backbone") or backbone is None:
        raise BadInputError(
            f"config.json names backbone {config.get('backbone')!r} through timm/AutoBackbone without a "
            "backbone_config; ecom2f reads transformers' own Swin and ResNet backbone configs only"
        )
    _require(backbone, "out_features", _STAGES, "config.json backbone_config.", default=_STAGES)
    kind = backbone.get("model_type")
    if kind == "swin":
        return _swin_section(backbone)
    if kind == "resnet":
        return _resnet_section(backbone)
    raise BadInputError(f"config.json backbone_config.model_type = {kind!r}: ecom2f supports 'swin' and 'resnet'")


def _pixel_scale(preprocessor: Mapping | None) -> tuple[list[float], list[float]]:
    """transformers normalises ``pixel * rescale_factor`` by mean/std in [0, 1]; ecom2f normalises 0..255 pixels."""
    if not preprocessor:
        return [m * 255 for m in _IMAGENET_MEAN], [s * 255 for s in _IMAGENET_STD]
    if not preprocessor.get("do_normalize", True):
        raise BadInputError("preprocessor_config.json do_normalize = false: ecom2f always normalises its inputs")
    scale = float(preprocessor.get("rescale_factor", 1 / 255)) if preprocessor.get("do_rescale", True) else 1.0
    mean = preprocessor.get("image_mean", _IMAGENET_MEAN)
    std = preprocessor.get("image_std", _IMAGENET_STD)
    return [float(m) / scale for m in mean], [float(s) / scale for s in std]


# ModelConfig's criterion fields -> transformers config.json keys.
_CRITERION_KEYS = {
    "class_weight": "class_weight", "mask_weight": "mask_weight", "dice_weight": "dice_weight",
    "no_object_weight": "no_object_weight", "num_points": "train_num_points", "oversample_ratio": "oversample_ratio",
    "importance_sample_ratio": "importance_sample_ratio", "deep_supervision": "use_auxiliary_loss",
}


def model_config_from_hf(config: Mapping, preprocessor: Mapping | None = None,
                         classes: ClassInfo | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of a transformers Mask2Former ``config.json`` (a dict).

    ``classes`` gives the things (:meth:`ClassInfo.model_things`) and the tasks turned on;
    default: the classes of ``id2label``. ``preprocessor``: ``preprocessor_config.json`` for
    the pixel mean/std (ImageNet's when absent).
    """
    if config.get("model_type") != "mask2former":
        raise BadInputError(f"config.json model_type = {config.get('model_type')!r}; expected 'mask2former'")
    for key, allowed in (("activation_function", "relu"), ("feature_strides", [4, 8, 16, 32])):
        _require(config, key, allowed, "config.json ", default=allowed)
    classes = classes or ClassInfo.from_names(class_names_from_hf(config))
    heads = int(config.get("num_attention_heads", 8))
    mean, std = _pixel_scale(preprocessor)
    layers = int(config.get("encoder_layers", 6))
    tree = {
        "backbone": _backbone_section(config),
        "pixel_decoder": {"conv_dim": int(config.get("feature_size", 256)),
                          "mask_dim": int(config.get("mask_feature_size", 256)), "encoder_layers": layers,
                          "heads": heads, "points": 4, "ffn_dim": int(config.get("encoder_feedforward_dim", 1024)),
                          "num_groups": 32, "in_features": ["res3", "res4", "res5"],
                          "common_stride": int(config.get("common_stride", 4))},
        "decoder": {"hidden_dim": int(config.get("hidden_dim", 256)), "num_queries": int(config.get("num_queries", 100)),
                    "layers": int(config.get("decoder_layers", 10)) - 1, "heads": heads,
                    "ffn_dim": int(config.get("dim_feedforward", 2048)), "pre_norm": bool(config.get("pre_norm", False)),
                    "enforce_input_proj": bool(config.get("enforce_input_projection", False))},
        "gate": {"exits": [k for k in (2, 3, 4, 5, 6) if k <= layers] or [layers]},
        "num_classes": classes.num_classes,
        **classes.model_things(),
        "pixel_mean": mean,
        "pixel_std": std,
        "test": {f"{task}_on": task in classes.tasks for task in ("semantic", "instance", "panoptic")},
        "criterion": criterion_section(config, _CRITERION_KEYS),
    }
    return ModelConfig.model_validate(tree)


def _exportable(config: ModelConfig) -> None:
    """What transformers' Mask2Former hard-codes must hold for ``config``."""
    pd = config.pixel_decoder
    fixed = {"pixel_decoder.points": (pd.points, 4), "pixel_decoder.num_groups": (pd.num_groups, 32),
             "pixel_decoder.in_features": (pd.in_features, ["res3", "res4", "res5"]),
             "decoder.heads": (config.decoder.heads, pd.heads)}
    different = [f"{key} = {value!r} (transformers: {allowed!r})" for key, (value, allowed) in fixed.items()
                 if value != allowed]
    if different:
        raise BadInputError("transformers' Mask2Former cannot hold this model: " + "; ".join(different))


def _hf_backbone(config: ModelConfig) -> dict:
    backbone = config.backbone
    if backbone.name in SWIN_SPECS:
        dim, depths, heads = SWIN_SPECS[backbone.name]
        return {"model_type": "swin", "embed_dim": dim, "depths": list(depths), "num_heads": list(heads),
                "window_size": backbone.swin_window_size, "patch_size": 4, "image_size": 224, "mlp_ratio": 4.0,
                "qkv_bias": True, "hidden_act": "gelu", "use_absolute_embeddings": False, "layer_norm_eps": 1e-5,
                "drop_path_rate": backbone.drop_path_rate, "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0, "out_features": list(_STAGES)}
    if backbone.name in RESNET_DEPTHS:
        layer_type, depths, sizes = _RESNETS[backbone.name]
        return {"model_type": "resnet", "layer_type": layer_type, "depths": depths, "hidden_sizes": sizes,
                "embedding_size": 64, "hidden_act": "relu", "downsample_in_first_stage": False,
                "downsample_in_bottleneck": backbone.stride_in_1x1, "out_features": list(_STAGES)}
    raise BadInputError(f"model.backbone.name {backbone.name!r} has no transformers equivalent")


def hf_config_from_model(config: ModelConfig, class_names) -> dict:
    """The ``config.json`` transformers' ``Mask2FormerForUniversalSegmentation`` is built from."""
    _exportable(config)
    pd, dec, crit = config.pixel_decoder, config.decoder, config.criterion
    names = list(class_names)
    if len(names) != config.num_classes:
        raise BadInputError(f"{len(names)} class names for a model of {config.num_classes} classes")
    return {
        "model_type": "mask2former", "architectures": ["Mask2FormerForUniversalSegmentation"],
        "backbone_config": _hf_backbone(config), "use_timm_backbone": False,
        "feature_size": pd.conv_dim, "mask_feature_size": pd.mask_dim, "hidden_dim": dec.hidden_dim,
        "encoder_feedforward_dim": pd.ffn_dim, "activation_function": "relu", "encoder_layers": pd.encoder_layers,
        "decoder_layers": dec.layers + 1, "num_attention_heads": pd.heads, "dropout": 0.0,
        "dim_feedforward": dec.ffn_dim, "pre_norm": dec.pre_norm, "enforce_input_projection": dec.enforce_input_proj,
        "common_stride": pd.common_stride, "ignore_value": 255, "num_queries": dec.num_queries,
        "no_object_weight": crit.no_object_weight, "class_weight": crit.class_weight,
        "mask_weight": crit.mask_weight, "dice_weight": crit.dice_weight, "train_num_points": crit.num_points,
        "oversample_ratio": crit.oversample_ratio, "importance_sample_ratio": crit.importance_sample_ratio,
        "use_auxiliary_loss": crit.deep_supervision, "feature_strides": [4, 8, 16, 32],
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def hf_preprocessor_config(config: ModelConfig) -> dict:
    """A ``preprocessor_config.json`` with the model's normalisation; sizes are transformers' defaults."""
    return {"image_processor_type": "Mask2FormerImageProcessor", "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [m / 255 for m in config.pixel_mean],
            "image_std": [s / 255 for s in config.pixel_std], "size_divisor": config.size_divisibility,
            "ignore_index": 255, "do_reduce_labels": False}
