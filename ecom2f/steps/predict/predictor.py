"""``Predictor``: a trained run's parent and gates on new images (the library API of ECO-M2F inference).

Images in, per-image results out: each image is resized to the run's test size (detectron2's
ResizeShortestEdge, :func:`ecom2f.data.transforms.inference_resize`), the gate of the requested
budget chooses its encoder depth, and the results come back at the image's own size, with the
depth, the image's encoder and whole-model GFLOPs (at the size the network saw, as the
evaluation counts them) and its time. A batch is grouped by size and chosen depth
(:func:`ecom2f.modeling.predict.predict_grouped`): each image costs what its depth costs, and
gets what it would get alone (to float rounding).

    predictor = Predictor.from_run(config)                  # <run>/parent/model_final.pth + <run>/gates/*
    results = predictor.predict(images, budget="layers_4")  # uint8 RGB [H, W, 3] arrays or [3, H, W] tensors
    results[0].depth, results[0].total_gflops, results[0].panoptic

Gates are swapped into the one network per call (a gate is a few kilobytes); a predictor is
not for concurrent calls from several threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ecom2f.config import Config
from ecom2f.config.model import ModelConfig
from ecom2f.errors import BadInputError, MissingStepError, UserError
from ecom2f.modeling.early_exit_mask2former import EarlyExitMask2Former
from ecom2f.modeling.flops import encoder_gflops, model_gflops
from ecom2f.modeling.gate import Gate
from ecom2f.modeling.postprocessing import InstanceResult
from ecom2f.modeling.predict import predict_grouped
from ecom2f.steps.inference import PRECISIONS, DeviceClock, load_parent, network_precision

log = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor", "choose", "resolve_device"]

COCO_TEST_SIZE = (800, 1333)  # detectron2's MIN_SIZE_TEST / MAX_SIZE_TEST for COCO


@dataclass
class Prediction:
    """One image's results, on the host, at the image's own size ``(H, W)``.

    panoptic: ``(ids int32 [H, W], segments)`` with 0 = no segment; segments ``{"id", "category_id"
    (contiguous class id), "isthing"}``. semantic: int64 ``[H, W]`` class per pixel.
    instances: :class:`InstanceResult` (bool masks ``[M, H, W]``). Each is None when its task was not run.
    """

    size: tuple[int, int]
    depth: int
    budget: str | None
    encoder_gflops: float
    total_gflops: float
    seconds: float
    panoptic: tuple[torch.Tensor, list[dict]] | None = None
    semantic: torch.Tensor | None = None
    instances: InstanceResult | None = None
    phases: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu; refuses cuda on a machine without one."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {device} asked for, but this machine has no CUDA device; use cpu or auto")
    return device


class Predictor:
    """The parent with its gates, ready to segment images.

    Args:
        model: the parent (:class:`EarlyExitMask2Former`, on its device, eval mode).
        gates: budget name -> :class:`Gate` (on any device; moved to the model's).
        default_budget: the budget used when a call names none (None: the only gate, if there is one).
        precision: ``fp32`` or ``bf16`` (the network under autocast; post-processing in fp32).
        tasks: any of ``panoptic``, ``instance``, ``semantic`` (default: all three).
        test_size: ``(short side, long-side limit)`` images are resized to (the run's
            ``data.test_min_size`` / ``test_max_size``).
        thresholds: overrides of ``model.config.test`` (object_mask_threshold, ...).
        gates_location: where the gates came from (``<run>/gates``), for messages.
    """

    def __init__(self, model: EarlyExitMask2Former, gates: Mapping[str, Gate] | None = None, *,
                 default_budget: str | None = None, precision: str = "fp32", tasks: Sequence[str] | None = None,
                 test_size: tuple[int, int] = COCO_TEST_SIZE, thresholds: Mapping | None = None,
                 gates_location: str | None = None) -> None:
        if precision not in PRECISIONS:
            raise BadInputError(f"precision {precision!r}: choose one of {PRECISIONS}")
        self.model = model.eval()
        self.device = model.device
        self.gates = {name: gate.to(self.device).eval() for name, gate in (gates or {}).items()}
        self.gates_location = gates_location
        if default_budget is not None:
            self._check_budget(default_budget)
        self.default_budget = default_budget
        self.precision = precision
        self.tasks = list(tasks or ("panoptic", "instance", "semantic"))
        self.test_size = tuple(test_size)
        self.thresholds = dict(thresholds or {})
        self.clock = DeviceClock(self.device)
        self._costs: dict[tuple[int, int, int], tuple[float, float]] = {}
        from ecom2f.data.transforms import inference_resize

        self._resize = inference_resize(*self.test_size)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_run(cls, config: Config, *, budgets: Sequence[str] | None = None, device=None, precision=None,
                 tasks=None) -> Predictor:
        """The run's parent (``<run>/parent/model_final.pth``) and its chosen gates (``<run>/gates/<budget>/``),
        local or s3://; settings default to ``config.serving``. ``budgets``: load only these."""
        from ecom2f.steps.evaluate.job import chosen_gate_dirs

        serving = config.serving
        layout = config.storage.layout()
        model = load_parent(config.model, layout.parent_weights, resolve_device(device or serving.device))
        found = chosen_gate_dirs(config)
        wanted = list(found) if budgets is None else list(budgets)
        unknown = [name for name in wanted if name not in found]
        if unknown:
            raise _unknown_budget(unknown[0], list(found), layout.gates)
        default = serving.budget if budgets is None or serving.budget in wanted else None
        return cls(model, _load_gates({name: found[name] for name in wanted}), default_budget=default,
                   precision=precision or serving.precision, tasks=tasks or serving.tasks,
                   test_size=(config.data.test_min_size, config.data.test_max_size), gates_location=layout.gates)

    @classmethod
    def from_weights(cls, model_config: ModelConfig, weights, gates: Mapping[str, str] | None = None, *,
                     device=None, **kwargs) -> Predictor:
        """A parent from explicit weights (a local path, bytes or a state dict) and gate folders
        (name -> folder with gate.pt / gate.json, local or s3://); other arguments as the constructor."""
        from ecom2f.modeling.weights import load_parent_weights

        model = load_parent_weights(model_config, weights).to(resolve_device(device))
        return cls(model, _load_gates(dict(gates or {})), **kwargs)

    # ----------------------------------------------------------------- budgets
    @property
    def budgets(self) -> list[str]:
        return sorted(self.gates)

    def resolve(self, budget: str | None = None, depth: int | None = None) -> tuple[str | None, object]:
        """``(budget name or None, depth spec for the model)`` of a call's choice (:func:`choose`)."""
        return choose(self.budgets, budget, depth, self.default_budget, self.model.num_encoder_layers,
                      self.gates_location)

    def _check_budget(self, budget: str) -> None:
        if budget not in self.gates:
            raise _unknown_budget(budget, self.budgets, self.gates_location)

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, images: Sequence, budget: str | None = None, depth: int | None = None) -> list[Prediction]:
        """Segment ``images`` (uint8 RGB ``[H, W, 3]`` numpy arrays or ``[3, H, W]`` tensors) at the
        depth the ``budget``'s gate chooses for each (or at a fixed ``depth``); see :meth:`resolve`."""
        name, spec = self.resolve(budget, depth)
        tensors = [_as_chw(image, index) for index, image in enumerate(images)]
        if not tensors:
            return []
        start = self.clock()
        resized = [self._resize({"image": image.to(self.device)})["image"] for image in tensors]
        resize_share = (self.clock() - start) / len(tensors)
        parent_gate = self.model.gate
        try:
            if name is not None:
                self.model.gate = self.gates[name]
            results = predict_grouped(
                self.model, resized, depth=spec, tasks=self.tasks, output_sizes=[t.shape[-2:] for t in tensors],
                autocast=lambda: network_precision(self.precision, self.device), clock=self.clock, **self.thresholds)
        finally:
            self.model.gate = parent_gate
        return [self._prediction(result, image, net_input, name, resize_share)
                for result, image, net_input in zip(results, tensors, resized)]

    def _prediction(self, result: dict, image: torch.Tensor, net_input: torch.Tensor, budget, resize_share) -> Prediction:
        depth = int(result["depth"])
        encoder, total = self.costs(*net_input.shape[-2:], depth)
        panoptic = None
        if "panoptic_seg" in result:
            ids, segments = result["panoptic_seg"]
            panoptic = (ids.cpu(), segments)
        semantic = result["sem_seg"].argmax(0).cpu() if "sem_seg" in result else None
        instances = None
        if "instances" in result:
            found = result["instances"]
            instances = InstanceResult(found.scores.float().cpu(), found.classes.cpu(), found.masks.cpu(),
                                       found.query_index.cpu())
        phases = {"resize": resize_share, **result["phases"]}
        return Prediction((int(image.shape[-2]), int(image.shape[-1])), depth, budget, encoder, total,
                          sum(phases.values()), panoptic, semantic, instances, phases)

    def warm_up(self) -> None:
        """One random image at the test size through the network: lazy initialisation, kernel selection
        and allocator growth happen here, not in the first timed call."""
        side = min(self.test_size)
        image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.predict([image], depth=self.model.num_encoder_layers)

    def costs(self, height: int, width: int, depth: int) -> tuple[float, float]:
        """``(encoder GFLOPs, whole-model GFLOPs)`` of one ``height x width`` network input at ``depth``."""
        key = (int(height), int(width), int(depth))
        if key not in self._costs:
            self._costs[key] = (encoder_gflops(self.model.config, *key), model_gflops(self.model, *key))
        return self._costs[key]


def _as_chw(image, index: int) -> torch.Tensor:
    """uint8 ``[3, H, W]`` of a ``[H, W, 3]`` numpy array or a ``[3, H, W]`` tensor."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BadInputError(f"image {index}: numpy images must be uint8 RGB [H, W, 3], got {image.dtype} "
                                f"{image.shape}")
        writable = image.flags.writeable and image.flags.c_contiguous  # torch shares the memory of the array
        return torch.from_numpy(image if writable else np.array(image)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise BadInputError(f"image {index}: expected a uint8 RGB [3, H, W] tensor or [H, W, 3] array, got {shape}")
    return image


def _load_gates(gate_dirs: Mapping[str, str]) -> dict[str, Gate]:
    if not gate_dirs:
        return {}
    from ecom2f.steps.gate.store import load_gate

    return {name: load_gate(folder)[0] for name, folder in gate_dirs.items()}


def choose(budgets: Sequence[str], budget: str | None, depth: int | None, default: str | None, layers: int,
           where: str | None = None) -> tuple[str | None, object]:
    """``(budget name or None, depth spec)``: a fixed ``depth`` needs no gate; otherwise the named
    budget, else ``default``, else the only one.

    Raises :class:`MissingStepError` when there is no gate at all (run step 3), :class:`BadInputError`
    for an unknown budget (listing those in ``budgets``), several budgets and none named, both a
    budget and a depth, or a depth outside ``0..layers``. ``where``: the gates' folder, for messages.
    """
    place = f" under {where}" if where else ""
    if depth is not None:
        if budget is not None:
            raise BadInputError(f"give a budget ({budget!r}) or a fixed depth ({depth}), not both")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= layers:
            raise BadInputError(f"depth {depth!r} must be an integer in 0..{layers}")
        return None, depth
    budget = budget if budget is not None else default
    if budget is None:
        if not budgets:
            raise MissingStepError(f"the run has no gates{place}: run step 3 (ecom2f tune-gate) to choose one per "
                                   "budget, or give a fixed depth")
        if len(budgets) > 1:
            raise BadInputError(f"several budgets exist ({', '.join(sorted(budgets))}); name one "
                                "(--budget, serving.budget, or the request's budget)")
        budget = next(iter(budgets))
    if budget not in budgets:
        raise _unknown_budget(budget, list(budgets), where)
    return budget, "gate"


def _unknown_budget(budget: str, known: list[str], where: str | None) -> UserError:
    place = f" under {where}" if where else ""
    if not known:
        return MissingStepError(f"no gate for budget {budget!r}: the run has no gates{place}; run step 3 "
                                "(ecom2f tune-gate) first, or give a fixed depth")
    return BadInputError(f"unknown budget {budget!r}; the budgets{place} are: {', '.join(sorted(known))}")
