from __future__ import annotations

import pytest
import torch
from torch import nn

from ecom2f.config.model import BackboneConfig
from ecom2f.modeling.backbone import build_backbone, load_backbone_weights
from ecom2f.modeling.frozen_batch_norm import FrozenBatchNorm2d, freeze_batch_norm
from ecom2f.modeling.resnet import ResNetBackbone


def test_frozen_batch_norm_equals_eval_batch_norm():
    bn = nn.BatchNorm2d(5, eps=1e-5).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    frozen = freeze_batch_norm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())  # nothing to train


@pytest.mark.parametrize("name, channels", [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048])])
def test_resnet_outputs(name, channels):
    backbone = build_backbone(BackboneConfig(name=name)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))
    ]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_freeze_at_and_stride_in_1x1():
    backbone = ResNetBackbone("resnet50", freeze_at=2, stride_in_1x1=True)
    assert not backbone.conv1.weight.requires_grad and not backbone.layer1[0].conv1.weight.requires_grad
    assert backbone.layer2[0].conv1.weight.requires_grad
    assert backbone.layer2[0].conv1.stride == (2, 2) and backbone.layer2[0].conv2.stride == (1, 1)


def test_swin_outputs_at_a_size_not_divisible_by_the_window():
    backbone = build_backbone(BackboneConfig(name="swin_t")).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 96, 160))
    assert [tuple(v.shape) for v in out.values()] == [(1, 96, 24, 40), (1, 192, 12, 20), (1, 384, 6, 10), (1, 768, 3, 5)]


def test_pretrained_weights_from_a_path(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    reference = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone(BackboneConfig(name="resnet18", weights=str(path)))
    assert torch.equal(backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.equal(backbone.bn1.running_var, reference.bn1.running_var)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_backbone_weights(backbone, tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        load_backbone_weights(backbone, tmp_path / "bad.pth")


def test_swin_window_attention_pads_before_shifting_as_detectron2():
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="swin_t")).eval()
    block = backbone.layers[0].blocks[1]  # a shifted block
    assert tuple(block.shift_size) == (3, 3)
    x = torch.randn(1, 12, 17, 96)
    with torch.no_grad():
        ours = block._attn(x)
        # detectron2's order == timm's on a map padded to whole windows beforehand, then cropped.
        padded = torch.nn.functional.pad(x, (0, 0, 0, 4, 0, 2))
        expected = SwinTransformerBlock._attn(block, padded)[:, :12, :17]
        timm_order = SwinTransformerBlock._attn(block, x)
    torch.testing.assert_close(ours, expected)
    assert (ours - timm_order).abs().max() > 1e-3


def test_the_configs_backbone_names_are_exactly_the_buildable_ones():
    from ecom2f.config.model import BACKBONE_NAMES
    from ecom2f.modeling.resnet import RESNET_DEPTHS
    from ecom2f.modeling.swin import SWIN_SPECS

    assert set(BACKBONE_NAMES) == set(RESNET_DEPTHS) | set(SWIN_SPECS)


def test_swin_l_has_mask2formers_widths():
    from ecom2f.modeling.swin import SwinBackbone

    with torch.device("meta"):  # 197M parameters: the shapes are what matters here
        backbone = SwinBackbone("swin_l", window_size=12)
    assert backbone.out_channels == {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}
    assert sum(p.numel() for p in backbone.parameters()) > 190_000_000
