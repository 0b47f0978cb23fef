"""transformers' Mask2Former checkpoint folders <-> ecom2f models, strictly and bit for bit.

A folder holds ``config.json`` and the weights (``model.safetensors``, sharded safetensors,
or ``pytorch_model.bin``), as ``save_pretrained`` writes them and the Hub serves them. An
export adds ``preprocessor_config.json`` (the model's normalisation), and, beside
transformers' files, what is ecom2f's own: ``ecom2f.json`` (the model section and the
classes) and ``ecom2f_gate.safetensors`` (the gate). transformers ignores both; an import
reads them back, so ecom2f -> transformers -> ecom2f returns the same tensors and config.

Local folders only: ``s3://`` sources are downloaded by the caller (``ecom2f.steps``).
Pickled ``pytorch_model.bin`` files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from ecom2f.config.model import ModelConfig
from ecom2f.errors import BadInputError, MissingFileError
from ecom2f.modeling.class_info import ClassInfo, generic_names
from ecom2f.modeling.conversion_report import ConversionReport
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model
from ecom2f.modeling.huggingface_config import (
    class_names_from_hf,
    hf_config_from_model,
    hf_preprocessor_config,
    model_config_from_hf,
)
from ecom2f.modeling.huggingface_keys import SWIN_FINAL_NORM, canonical_hf_key, hf_keys_for, is_ignored_hf_key
from ecom2f.modeling.mask2former_checkpoint import CheckpointMismatchError
from ecom2f.modeling.model_compat import architecture_differences
from ecom2f.modeling.swin import SWIN_SPECS

__all__ = [
    "CONFIG_FILE",
    "GATE_FILE",
    "PREPROCESSOR_FILE",
    "SIDECAR_FILE",
    "WEIGHT_FILES",
    "HuggingFaceFolder",
    "ecom2f_state_to_hf",
    "export_huggingface",
    "hf_checkpoint_files",
    "hf_state_to_ecom2f",
    "huggingface_model_config",
    "import_huggingface",
    "is_huggingface_folder",
    "load_huggingface_into",
    "read_huggingface_folder",
]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SIDECAR_FILE = "ecom2f.json"
GATE_FILE = "ecom2f_gate.safetensors"
# In the order transformers prefers them; an index lists the shards in its "weight_map".
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SIDECAR_FORMAT = "ecom2f-huggingface-sidecar/1"


@dataclasses.dataclass
class HuggingFaceFolder:
    """What a checkpoint folder holds; ``state`` keyed by the names in files (:func:`canonical_hf_key`)."""

    config: dict
    preprocessor: dict | None = None
    sidecar: dict | None = None
    state: dict[str, torch.Tensor] | None = None
    gate: dict[str, torch.Tensor] | None = None


def is_huggingface_folder(path: str | os.PathLike) -> bool:
    return Path(path, CONFIG_FILE).is_file()


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadInputError(f"{path} is not valid JSON ({error})") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise BadInputError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    name = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if name is None:
        raise MissingFileError(f"{folder} has no weights: expected one of {', '.join(WEIGHT_FILES)}")
    if not name.endswith(".index.json"):
        return _load_tensors(folder / name)
    shards = sorted(set((_json(folder / name) or {}).get("weight_map", {}).values()))
    absent = [shard for shard in shards if not (folder / shard).is_file()]
    if absent or not shards:
        raise MissingFileError(f"{folder / name} lists shards {absent or shards} that are not in the folder")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_load_tensors(folder / shard))
    return state


def read_huggingface_folder(folder: str | os.PathLike, weights: bool = True) -> HuggingFaceFolder:
    """The JSON files of a checkpoint folder, and its tensors when ``weights``."""
    folder = Path(folder)
    config = _json(folder / CONFIG_FILE)
    if config is None:
        raise MissingFileError(f"{folder} is not a transformers checkpoint folder: it has no {CONFIG_FILE}")
    found = HuggingFaceFolder(config, _json(folder / PREPROCESSOR_FILE), _json(folder / SIDECAR_FILE))
    if weights:
        state = _load_weights(folder)
        found.state = {canonical_hf_key(key): value for key, value in state.items()}
        if len(found.state) != len(state):
            raise BadInputError(f"{folder}: the weights name some tensors twice (old and new transformers names)")
        if (folder / GATE_FILE).is_file():
            found.gate = _load_tensors(folder / GATE_FILE)
    return found


def huggingface_model_config(found: HuggingFaceFolder, num_things: int | None = None) -> tuple[ModelConfig, ClassInfo]:
    """The model section and classes of a folder (``ecom2f.json`` when an export wrote one).

    ``num_things``: how many leading classes are things, for label sets ecom2f does not
    recognise (:class:`ClassInfo`); it overrides what the folder says.
    """
    names = class_names_from_hf(found.config)
    sidecar = found.sidecar
    if sidecar is not None and num_things is None:
        if sidecar.get("format") != SIDECAR_FORMAT:
            raise BadInputError(f"{SIDECAR_FILE} has format {sidecar.get('format')!r}; expected {SIDECAR_FORMAT!r}")
        things = ClassInfo.from_json(sidecar["classes"]).thing_ids
        classes = ClassInfo(names, things, ClassInfo.from_names(names).label_set)
    else:
        classes = ClassInfo.from_names(names, num_things)
    derived = model_config_from_hf(found.config, found.preprocessor, classes)
    if sidecar is None or num_things is not None:
        return derived, classes
    recorded = ModelConfig.model_validate(sidecar["model"])
    different = architecture_differences(derived, recorded, ("config.json", SIDECAR_FILE))
    if different:
        raise BadInputError(f"{CONFIG_FILE} and {SIDECAR_FILE} describe different models: " + "; ".join(different))
    return recorded, classes


# ----------------------------------------------------------------------------- tensors
def _window_index_problems(model: EarlyExitMask2Former, state: Mapping[str, torch.Tensor], used: set) -> list[str]:
    """Swin's index buffers are derived from the window size; a file's copy must agree with ours."""
    problems = []
    for name, buffer in model.backbone.named_buffers():
        keys = hf_keys_for("backbone." + name, model.config.backbone.name) if name.endswith("index") else None
        if keys and keys[0] in state:
            used.add(keys[0])
            if not torch.equal(state[keys[0]].reshape(-1).long(), buffer.reshape(-1).cpu()):
                problems.append(f"{keys[0]} differs from the model's window index (another window size?)")
    return problems


def hf_state_to_ecom2f(model: EarlyExitMask2Former, state: Mapping[str, torch.Tensor],
                       gate: Mapping[str, torch.Tensor] | None = None) -> tuple[dict, ConversionReport]:
    """transformers tensors (file names) -> ``model``'s state dict entries, strictly.

    Raises:
        CheckpointMismatchError: keys on either side without a counterpart, or shapes that differ.
    """
    report = ConversionReport("transformers Mask2Former", "ecom2f")
    target, backbone = model.state_dict(), model.config.backbone.name
    mapped, used, missing, shapes = {}, set(), [], []
    for key, value in target.items():
        names = hf_keys_for(key, backbone)
        if names is None:
            if gate is not None and key in gate:
                mapped[key] = gate[key]
            else:
                report.initialised[key] = "transformers' Mask2Former has no gate (ecom2f's own; trained in step 3)"
            continue
        absent = [name for name in names if name not in state]
        if absent:
            missing.append(absent[0])
            continue
        used.update(names)
        tensor = torch.cat([state[name] for name in names]) if len(names) > 1 else state[names[0]]
        if tuple(tensor.shape) != tuple(value.shape):
            shapes.append(f"{names[0]}: checkpoint {tuple(tensor.shape)} vs model {tuple(value.shape)}")
        mapped[key] = tensor
    problems = _window_index_problems(model, state, used)
    leftover = [key for key in state if key not in used]
    report.ignored = {key: why for key in leftover if (why := is_ignored_hf_key(key))}
    unexpected = [key for key in leftover if key not in report.ignored]
    if unexpected or missing or shapes or problems:
        raise CheckpointMismatchError(
            "the transformers checkpoint does not fit the model:\n"
            f"  checkpoint keys with no model key ({len(unexpected)}): {unexpected[:10]}\n"
            f"  model weights absent from the checkpoint ({len(missing)}): {missing[:10]}\n"
            f"  shape mismatches ({len(shapes)}): {shapes[:10]}\n  other: {problems}"
        )
    report.mapped = sorted(mapped)
    return mapped, report


def ecom2f_state_to_hf(model: EarlyExitMask2Former) -> tuple[dict, dict, ConversionReport]:
    """``model`` -> (transformers tensors, gate tensors, report). Batch-norm counters, the loss'
    class weights and Swin's unused final norm are written as transformers initialises them."""
    report = ConversionReport("ecom2f", "transformers Mask2Former")
    config, out, gate = model.config, {}, {}
    for key, value in model.state_dict().items():
        names = hf_keys_for(key, config.backbone.name)
        if names is None:
            gate[key] = value.detach().clone().contiguous()
            continue
        for name, part in zip(names, value.detach().chunk(len(names)) if len(names) > 1 else [value.detach()]):
            out[name] = part.clone().contiguous()
        report.mapped.append(key)
    for name in [name for name in out if name.endswith("normalization.running_mean")]:
        counter = name.replace("running_mean", "num_batches_tracked")
        out[counter] = torch.zeros((), dtype=torch.long)
        report.initialised[counter] = "batch-norm step counters: 0 (ecom2f's batch norm is frozen)"
    if config.backbone.name in SWIN_SPECS:
        width = SWIN_SPECS[config.backbone.name][0] * 8
        out[SWIN_FINAL_NORM + "weight"], out[SWIN_FINAL_NORM + "bias"] = torch.ones(width), torch.zeros(width)
        report.initialised[SWIN_FINAL_NORM + "*"] = "Swin's final LayerNorm, which the backbone never applies"
    empty_weight = torch.ones(config.num_classes + 1)
    empty_weight[-1] = config.criterion.no_object_weight
    out["criterion.empty_weight"] = empty_weight
    report.initialised["criterion.empty_weight"] = "the loss' class weights, from criterion.no_object_weight"
    report.ignored.update({key: "ecom2f's gate: written beside, to " + GATE_FILE for key in gate})
    return out, gate, report


# ----------------------------------------------------------------------------- folders
def load_huggingface_into(model: EarlyExitMask2Former, found: HuggingFaceFolder) -> ConversionReport:
    """Copies a folder's tensors (read with ``weights=True``) into ``model``; strict but for the gate."""
    mapped, report = hf_state_to_ecom2f(model, found.state or {}, found.gate)
    target = model.state_dict()
    with torch.no_grad():
        for key, value in mapped.items():
            target[key].copy_(value.to(target[key].dtype))
    return report


def import_huggingface(folder: str | os.PathLike, num_things: int | None = None
                       ) -> tuple[EarlyExitMask2Former, ClassInfo, ConversionReport]:
    """A transformers Mask2Former folder -> (ecom2f model in eval mode, its classes, the report)."""
    found = read_huggingface_folder(folder)
    config, classes = huggingface_model_config(found, num_things)
    model = build_model(config)
    report = load_huggingface_into(model, found)
    report.source = f"transformers Mask2Former ({folder})"
    if float(found.config.get("dropout", 0.0)) > 0:
        report.notes.append(f"config.json dropout {found.config['dropout']} is not kept: ecom2f's encoder and decoder "
                            "have none (transformers also uses it as the decoder's layer-drop in training)")
    return model.eval(), classes, report


def _write_folder(folder: Path, files: dict[str, object]) -> None:
    """Writes every file into a sibling temporary folder, then renames it into place."""
    from safetensors.torch import save_file

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInputError(f"{folder} exists and is not an empty folder; give a new folder to write to")
    staging = folder.with_name(f".{folder.name}.writing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            save_file(content, str(staging / name), metadata={"format": "pt"})
        else:
            (staging / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    if folder.exists():
        folder.rmdir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)


def export_huggingface(model: EarlyExitMask2Former, folder: str | os.PathLike,
                       classes: ClassInfo | None = None) -> ConversionReport:
    """Writes ``model`` (at full depth: transformers runs every encoder layer) as a folder that
    ``Mask2FormerForUniversalSegmentation.from_pretrained`` loads; the gate and the model
    section go beside it. ``classes``: names for ``id2label`` (``LABEL_i`` when None)."""
    config = model.config
    if classes is None:
        classes = ClassInfo(generic_names(config.num_classes), config.thing_ids)
    if classes.num_classes != config.num_classes:
        raise BadInputError(f"{classes.num_classes} class names for a model of {config.num_classes} classes")
    tensors, gate, report = ecom2f_state_to_hf(model)
    sidecar = {"format": SIDECAR_FORMAT, "model": config.model_dump(mode="json"),
               "classes": ClassInfo(classes.names, config.thing_ids, classes.label_set).to_json()}
    files: dict[str, object] = {CONFIG_FILE: hf_config_from_model(config, classes.names),
                                PREPROCESSOR_FILE: hf_preprocessor_config(config), WEIGHT_FILES[0]: tensors,
                                SIDECAR_FILE: sidecar}
    if gate:
        files[GATE_FILE] = gate
    _write_folder(Path(folder), files)
    report.target = f"transformers Mask2Former ({folder})"
    if classes.names == generic_names(config.num_classes):
        report.notes.append("no class names known: id2label holds LABEL_0.. (give the names to keep them)")
    return report


def hf_checkpoint_files(listing: Collection[str]) -> list[str]:
    """Of a folder's file names, those an import reads (the preferred weights, not every format)."""
    wanted = [name for name in (CONFIG_FILE, PREPROCESSOR_FILE, SIDECAR_FILE, GATE_FILE) if name in listing]
    weights = next((name for name in WEIGHT_FILES if name in listing), None)
    return wanted + ([weights] if weights else [])
