"""Mask2Former whose pixel-decoder encoder can exit early, per image, with a shared decoder.

``forward_raw`` is the training/analysis entry point on normalised padded pixels;
``forward_all_exits`` runs backbone and encoder once and the decoder at every exit
(ECO-M2F step 2); ``predict`` goes from uint8 images to Mask2Former's results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ecom2f.modeling.backbone import build_backbone
from ecom2f.modeling.config import ModelConfig
from ecom2f.modeling.gate import Gate, valid_cells
from ecom2f.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from ecom2f.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["EarlyExitMask2Former", "build_model", "DepthSpec"]

DepthSpec = None | int | str | Sequence[int] | torch.Tensor


def build_model(config: ModelConfig | dict | None = None) -> EarlyExitMask2Former:
    """A model from a :class:`ModelConfig` (or its dict form); defaults give Mask2Former R50 COCO panoptic."""
    if config is None:
        config = ModelConfig()
    elif isinstance(config, dict):
        config = ModelConfig.model_validate(config)
    return EarlyExitMask2Former(config)


class EarlyExitMask2Former(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone)
        pd = config.pixel_decoder
        self.pixel_decoder = MSDeformAttnPixelDecoder(pd, self.backbone.out_channels, self.backbone.strides)
        self.decoder = MultiScaleMaskedTransformerDecoder(config.decoder, pd.conv_dim, pd.mask_dim, config.num_classes)
        self.gate = Gate(pd.conv_dim, config.gate)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def num_encoder_layers(self) -> int:
        return self.pixel_decoder.encoder.num_layers

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------- depths
    def resolve_depths(self, depth: DepthSpec, batch: int, gate_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``None`` (all layers), an int, per-image ints, or ``"gate"`` -> ``[N]`` int64."""
        layers = self.num_encoder_layers
        if depth is None:
            depths = torch.full((batch,), layers, dtype=torch.long)
        elif isinstance(depth, str):
            if depth != "gate":
                raise ValueError(f"depth {depth!r}: the only named depth is 'gate'")
            if gate_logits is None:
                raise ValueError("depth='gate' needs the gate logits")
            depths = self.gate.depths(gate_logits)
        elif isinstance(depth, int):
            depths = torch.full((batch,), depth, dtype=torch.long)
        else:
            depths = torch.as_tensor(depth, dtype=torch.long).reshape(-1)
            if depths.numel() != batch:
                raise ValueError(f"depth has {depths.numel()} entries for a batch of {batch} images; give one per image")
        depths = depths.to(self.device)
        if batch and (int(depths.min()) < 0 or int(depths.max()) > layers):
            raise ValueError(f"depth {depths.tolist()} must lie in 0..{layers} (the encoder has {layers} layers)")
        return depths

    # ----------------------------------------------------------------- passes
    def _encode_inputs(self, pixels: torch.Tensor, image_sizes=None):
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels have shape {tuple(pixels.shape)}; expected normalised [N, 3, H, W]")
        features = self.backbone(pixels)
        projected = self.pixel_decoder.project(features)
        inputs = self.pixel_decoder.encoder_inputs(projected)
        coarsest = projected[0]
        valid = None if image_sizes is None else valid_cells(image_sizes, pixels.shape[-2:], coarsest.shape[-2:])
        gate_features = self.gate.pool(coarsest, valid)
        return features, projected, inputs, gate_features

    def forward_raw(self, pixels: torch.Tensor, depth: DepthSpec = None, image_sizes=None) -> dict:
        """One pass at the given depth(s).

        Args:
            pixels: normalised, padded ``[N, 3, H, W]``.
            depth: see :meth:`resolve_depths`.
            image_sizes: optional ``[(h_i, w_i)]`` of the images before padding; the gate then
                pools only each image's own cells (so a batch gates as each image alone would).
        Returns a dict with ``encoder_layer_out`` (``[N, S, C]`` after each executed layer,
        tokens res5, res4, res3, row-major), ``encoder_input`` ``[N, S, C]``, ``mask_features``
        ``[N, D, H/4, W/4]``, ``multi_scale_features`` (3 maps, coarsest first), ``pred_logits``
        ``[N, Q, K+1]``, ``pred_masks`` ``[N, Q, H/4, W/4]``, ``aux_outputs``, ``depths`` ``[N]``,
        ``gate_features`` ``[N, F]``, ``gate_logits`` ``[N, E]``.
        """
        features, projected, inputs, gate_features = self._encode_inputs(pixels, image_sizes)
        gate_logits = self.gate(gate_features)
        depths = self.resolve_depths(depth, pixels.shape[0], gate_logits)
        final, layer_outputs = self.pixel_decoder.encoder(inputs, depths, keep_layer_outputs=True)
        mask_features, multi_scale = self.pixel_decoder.decode(final, inputs.spatial_shapes, features)
        out = self.decoder(multi_scale, mask_features)
        out.update(
            encoder_layer_out=layer_outputs,
            encoder_input=inputs.tokens,
            mask_features=mask_features,
            multi_scale_features=multi_scale,
            depths=depths,
            gate_features=gate_features,
            gate_logits=gate_logits,
        )
        return out

    def forward(self, pixels: torch.Tensor, depth: DepthSpec = None) -> dict:
        return self.forward_raw(pixels, depth)

    def forward_all_exits(self, pixels: torch.Tensor, exits: Sequence[int] | None = None) -> dict:
        """Backbone and encoder once (to the deepest exit); FPN and decoder after each exit.

        Returns ``{"exits": [k...], "outputs": {k: decoder dict with pred_logits/pred_masks/
        aux_outputs/mask_features}, "encoder_states": {k: [N, S, C]}, "gate_features": [N, F],
        "coarsest": [N, C, h, w]}`` (``coarsest``: the gate's input map, for other poolings).
        """
        exits = list(self.config.gate.exits if exits is None else exits)
        layers = self.num_encoder_layers
        if not exits or sorted(set(exits)) != exits or exits[0] < 0 or exits[-1] > layers:
            raise ValueError(f"exits {exits} must be strictly increasing depths in 0..{layers}")
        features, projected, inputs, gate_features = self._encode_inputs(pixels)
        n = pixels.shape[0]
        depths = torch.full((n,), exits[-1], dtype=torch.long, device=pixels.device)
        _, states = self.pixel_decoder.encoder(inputs, depths, keep_layer_outputs=True)
        chosen = [inputs.tokens if k == 0 else states[k - 1] for k in exits]
        laterals = self.pixel_decoder.laterals(features)
        outputs = {}
        # One exit at a time: peak memory stays that of one forward (mask features are the
        # largest tensors), and per-exit results equal a forward at that depth exactly.
        for k, tokens in zip(exits, chosen):
            mask_features, multi_scale = self.pixel_decoder.decode(tokens, inputs.spatial_shapes, laterals=laterals)
            outputs[k] = self.decoder(multi_scale, mask_features)
            outputs[k]["mask_features"] = mask_features
        return {
            "exits": exits,
            "outputs": outputs,
            "encoder_states": dict(zip(exits, chosen)),
            "gate_features": gate_features,
            "coarsest": projected[0],
        }

    # ----------------------------------------------------------------- inference
    def predict(self, images, depth: DepthSpec = None, tasks: Sequence[str] | None = None, **thresholds) -> list[dict]:
        """Mask2Former inference on uint8 RGB images; see :func:`ecom2f.modeling.predict.predict`."""
        from ecom2f.modeling.predict import predict

        return predict(self, images, depth=depth, tasks=tasks, **thresholds)
