"""Everything a step-1 worker trains with: the model, its objective, AdamW, the schedule, DeepSpeed."""

from __future__ import annotations

import dataclasses
from functools import partial

import torch

from ecom2f.config import Config
from ecom2f.engine.deepspeed_config import build_deepspeed_config, disable_cpu_shm_comm_build
from ecom2f.engine.lr_schedule import lr_multiplier
from ecom2f.engine.optimizer import ExitAwareAdamW
from ecom2f.engine.param_groups import build_param_groups, encoder_layer_reach
from ecom2f.engine.precision import resolve_precision
from ecom2f.modeling import EarlyExitMask2Former, build_criterion, build_model
from ecom2f.modeling.criterion import SetCriterion
from ecom2f.steps.parent.init import initialize_parent
from ecom2f.steps.parent.objective import ParentObjective


@dataclasses.dataclass
class ParentTrainer:
    model: EarlyExitMask2Former
    criterion: SetCriterion
    engine: object  # deepspeed.DeepSpeedEngine around a ParentObjective
    optimizer: ExitAwareAdamW
    precision: str


def build_trainer(config: Config, rank: int, device: torch.device, build=build_model) -> ParentTrainer:
    """Model (initialised as ``parent.init`` says) and a DeepSpeed engine around its objective.

    Every rank seeds with ``seed + rank`` (its own augmentation stream); DeepSpeed broadcasts
    rank 0's initial weights. The gate is not trained in step 1: it is frozen, so it stays
    out of the optimizer and keeps its initialisation.
    """
    import deepspeed

    precision = resolve_precision(config.solver.precision, device)
    torch.manual_seed(config.seed + rank)
    model = build(config.model)
    initialize_parent(model, config)
    model.gate.requires_grad_(False)
    model = model.to(device)
    criterion = build_criterion(config.model)
    objective = ParentObjective(model, criterion, config.parent.alpha).to(device)
    solver = config.solver
    groups = build_param_groups(
        model, base_lr=solver.base_lr, weight_decay=solver.weight_decay, backbone_multiplier=solver.backbone_multiplier,
        weight_decay_norm=solver.weight_decay_norm, weight_decay_embed=solver.weight_decay_embed,
        reach=encoder_layer_reach(model),
    )
    optimizer = ExitAwareAdamW(groups, lr=solver.base_lr)
    schedule = solver.lr_schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        partial(lr_multiplier, max_iter=solver.max_iter, schedule=schedule.name, steps=schedule.steps,
                gamma=schedule.gamma, power=schedule.power, warmup_iters=solver.warmup_iters,
                warmup_factor=solver.warmup_factor),
    )
    if device.type == "cpu":
        disable_cpu_shm_comm_build()
    clip = solver.clip_gradients
    ds_config = build_deepspeed_config(
        micro_batch_per_worker=config.batch_size_per_worker,
        gradient_accumulation_steps=solver.gradient_accumulation_steps,
        zero_stage=config.parent.zero_stage,
        precision=precision,
        gradient_clipping=clip.value if clip.enabled else None,
    )
    engine, _, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return ParentTrainer(model, criterion, engine, optimizer, precision)
