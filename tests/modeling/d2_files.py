"""detectron2's ``R-50.pkl`` and Mask2Former's Swin ``.pkl``, written here as their converters write them.

The renaming below follows detectron2's tools/convert-torchvision-to-d2.py and Mask2Former's
tools/convert-pretrained-swin-model-to-d2.py (plus the official Swin-Transformer names); it is
written independently of the library's mapping, which the tests using these files then test.
"""

from __future__ import annotations

import pickle
import re

import torch
import torchvision

SWIN_T_DEPTHS = (2, 2, 6, 2)


def torchvision_resnet(name: str = "resnet50", seed: int = 0) -> torch.nn.Module:
    """A torchvision ResNet in eval mode with non-trivial BN statistics (so FrozenBN is not the identity)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(1 + 0.1 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))
                module.running_mean.copy_(0.1 * torch.randn_like(module.running_mean))
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(1234)
    return model


def d2_resnet_name(key: str) -> str:
    """torchvision ResNet name -> detectron2's, as convert-torchvision-to-d2.py renames it."""
    if "layer" not in key:
        key = "stem." + key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}", f"res{stage + 1}")
    for conv in (1, 2, 3):
        key = key.replace(f"bn{conv}", f"conv{conv}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def d2_resnet_state(model: torch.nn.Module) -> dict:
    """``{detectron2 name: numpy array}``, the ``"model"`` entry of R-50.pkl."""
    return {d2_resnet_name(key): value.detach().numpy() for key, value in model.state_dict().items()}


def write_d2_pickle(path, state: dict, author: str) -> None:
    with open(path, "wb") as handle:
        pickle.dump({"model": state, "__author__": author, "matching_heuristics": True}, handle)


def write_d2_resnet_pkl(path, model: torch.nn.Module) -> None:
    write_d2_pickle(path, d2_resnet_state(model), "torchvision")


def timm_swin_t(seed: int = 0) -> torch.nn.Module:
    """timm's Swin-T at 224 (random weights): the source of an 'official' Swin state dict."""
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(seed)
    return SwinTransformer(embed_dim=96, depths=SWIN_T_DEPTHS, num_heads=(3, 6, 12, 24), window_size=7).eval()


def official_window_index(window: int = 7) -> torch.Tensor:
    """Swin-Transformer's ``relative_position_index`` ``[window², window²]``, from its definition."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, window²]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def official_swin_state(model: torch.nn.Module) -> dict:
    """The official Swin-Transformer state dict of a timm Swin: patch merging at the end of
    stage i (timm: start of i+1), ``head.*``, per-block ``relative_position_index`` and, in
    shifted blocks, ``attn_mask``."""
    state = {}
    for key, value in model.state_dict().items():
        merge = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
        if merge:
            key = f"layers.{int(merge.group(1)) - 1}.downsample.{merge.group(2)}"
        state[key.replace("head.fc.", "head.")] = value.detach().clone()
    for stage, depth in enumerate(SWIN_T_DEPTHS):
        for block in range(depth):
            state[f"layers.{stage}.blocks.{block}.attn.relative_position_index"] = official_window_index()
    for name, buffer in model.named_buffers():
        if name.endswith("attn_mask"):
            state[name] = buffer.clone()
    return state


def write_m2f_swin_pkl(path, model: torch.nn.Module) -> dict:
    """Mask2Former's converter: ``torch.load(official.pth)["model"]`` pickled with plain pickle."""
    state = official_swin_state(model)
    write_d2_pickle(path, state, "third_party")
    return state


