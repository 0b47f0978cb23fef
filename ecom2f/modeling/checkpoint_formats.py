"""The checkpoint formats ecom2f reads and writes, recognised from the files themselves.

| format | what it is | read with |
|---|---|---|
| ``mask2former`` | detectron2 ``.pkl`` / Mask2Former ``.pth`` (+ the detectron2 YAML); ECO-M2F's carry the gate | :func:`read_mask2former` |
| ``huggingface`` | a transformers ``Mask2FormerForUniversalSegmentation`` folder | :func:`~ecom2f.modeling.huggingface_checkpoint.import_huggingface` |
| ``ecom2f`` | a run's ``parent/model_final.pth`` with the run's model section | the CLI (``ecom2f.cli.convert``), from a run folder |

Local paths only; ``s3://`` is the caller's to download.
"""

from __future__ import annotations

import os
from pathlib import Path

from ecom2f.errors import BadInputError, MissingFileError
from ecom2f.modeling.conversion_report import ConversionReport
from ecom2f.modeling.d2_config import model_config_from_d2, save_d2_yaml
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former, build_model
from ecom2f.modeling.huggingface_checkpoint import is_huggingface_folder
from ecom2f.modeling.mask2former_checkpoint import (
    CheckpointMismatchError,
    export_mask2former,
    load_into,
    load_mask2former_state_dict,
)

__all__ = ["FORMATS", "d2_yaml_beside", "detect_checkpoint", "read_mask2former", "write_mask2former"]

FORMATS = ("ecom2f", "mask2former", "huggingface")
_GATE_KEY = "sem_seg_head.pixel_decoder.transformer.encoder.gt."


def detect_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """``(format, description)`` of a local file or folder (a run folder is the CLI's to recognise).

    Raises:
        MissingFileError: nothing at ``path``.
        BadInputError: a file of no known format.
    """
    path = Path(path)
    if path.is_dir():
        if is_huggingface_folder(path):
            return "huggingface", "transformers Mask2Former folder"
        raise BadInputError(f"{path} is a folder with neither config.json (transformers) nor a run's config.yaml")
    if not path.is_file():
        raise MissingFileError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix not in (".pkl", ".pth", ".pt"):
        raise BadInputError(f"{path}: expected a detectron2 .pkl, a .pth, or a folder (transformers or an ecom2f run)")
    keys = list(load_mask2former_state_dict(path))
    if any(key.startswith("sem_seg_head.") for key in keys):
        with_gate = any(key.startswith(_GATE_KEY) for key in keys)
        kind = "ECO-M2F checkpoint (with gate)" if with_gate else "Mask2Former checkpoint"
        return "mask2former", f"{kind}, detectron2 {'pickle' if path.suffix == '.pkl' else 'torch file'}"
    if any(key.startswith("pixel_decoder.") for key in keys):
        raise BadInputError(
            f"{path} holds ecom2f weights without their model section; convert the run folder that holds it "
            "(<run>/parent/model_final.pth with <run>/config.yaml) instead"
        )
    raise BadInputError(f"{path}: no Mask2Former (sem_seg_head.*) or ecom2f keys; first keys: {keys[:3]}")


def d2_yaml_beside(path: str | os.PathLike) -> Path:
    """Where :func:`write_mask2former` puts the config of ``model.pth``: ``model.yaml``."""
    return Path(path).with_suffix(".yaml")


def read_mask2former(path: str | os.PathLike, d2_yaml: str | os.PathLike | None = None,
                     num_things: int | None = None) -> tuple[EarlyExitMask2Former, ConversionReport]:
    """A Mask2Former / ECO-M2F checkpoint and its detectron2 YAML (default: the ``.yaml`` beside it)."""
    yaml_path = Path(d2_yaml) if d2_yaml else d2_yaml_beside(path)
    if not yaml_path.is_file():
        raise MissingFileError(
            f"no detectron2 config for {path}: {yaml_path} does not exist; give the YAML the checkpoint was "
            "trained with (Mask2Former's configs/..., or cfg.dump())"
        )
    try:
        config = model_config_from_d2(yaml_path, num_things=num_things)
    except ValueError as error:
        raise BadInputError(f"{yaml_path}: {error}") from None
    model = build_model(config)
    source = load_mask2former_state_dict(path)
    try:
        gate_left = load_into(model, source)
    except CheckpointMismatchError as error:
        raise BadInputError(f"{path} does not fit {yaml_path}: {error}") from None
    report = ConversionReport(f"Mask2Former ({path})", "ecom2f")
    report.mapped = sorted(key for key in model.state_dict() if key not in gate_left)
    report.initialised = {key: "a plain Mask2Former checkpoint has no gate (trained in step 3)" for key in gate_left}
    report.ignored = {key: _ignored_why(key) for key in source if key == "criterion.empty_weight"
                      or key.endswith("relative_position_index")}
    return model.eval(), report


def _ignored_why(key: str) -> str:
    if key.endswith("relative_position_index"):
        return "Swin's window index, derived from the window size (checked equal)"
    return "the loss' class weights (rebuilt from criterion.no_object_weight)"


def write_mask2former(model: EarlyExitMask2Former, path: str | os.PathLike) -> ConversionReport:
    """``path`` (``{"model": state dict}`` under Mask2Former's names, gate included as ECO-M2F
    names it) and its detectron2 YAML beside it (:func:`d2_yaml_beside`)."""
    path = Path(path)
    if path.suffix != ".pth":
        raise BadInputError(f"{path}: a Mask2Former checkpoint is written as a .pth file")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_d2_yaml(model.config, d2_yaml_beside(path))
    except ValueError as error:
        raise BadInputError(str(error)) from None
    out = export_mask2former(model, path)
    report = ConversionReport("ecom2f", f"Mask2Former ({path}, config {d2_yaml_beside(path).name})")
    report.mapped = sorted(model.state_dict())
    report.initialised = {key: _ignored_why(key) for key in out
                          if key == "criterion.empty_weight" or key.endswith("relative_position_index")}
    report.notes.append("detectron2 checkpoints carry no class names, and their YAML no thing/stuff split: "
                        "give num_things when reading it back unless it has COCO's 133 classes")
    return report
