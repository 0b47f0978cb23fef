"""Mask2Former whose pixel-decoder encoder can exit early, per image, with a shared decoder.

``forward_raw`` is the training/analysis entry point on normalised padded pixels;
``forward_exits`` runs backbone and encoder once and the decoder after each requested
exit, with gradients (training at several exits); ``forward_all_exits`` is its no-aux form
for ECO-M2F step 2; ``predict`` goes from uint8 images to Mask2Former's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ecom2f.config.model import ModelConfig
from ecom2f.modeling.backbone import build_backbone
from ecom2f.modeling.deformable_encoder import EncoderInputs, check_depths, host_ints_to_device
from ecom2f.modeling.gate import Gate, valid_cells
from ecom2f.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from ecom2f.modeling.transformer_decoder import MultiScaleMaskedTransformerDecoder

__all__ = ["DepthSpec", "EarlyExitMask2Former", "Trunk", "build_model"]

DepthSpec = None | int | str | Sequence[int] | torch.Tensor


def build_model(config: ModelConfig | dict | None = None) -> EarlyExitMask2Former:
    """A model from a :class:`ModelConfig` (or its dict form); defaults give Mask2Former R50 COCO panoptic."""
    if config is None:
        config = ModelConfig()
    elif isinstance(config, dict):
        config = ModelConfig.model_validate(config)
    return EarlyExitMask2Former(config)


@dataclass
class Trunk:
    """What every depth of one batch shares (:meth:`EarlyExitMask2Former.forward_trunk`).

    inputs: the encoder's inputs (:class:`EncoderInputs`, batch ``N``).
    laterals: the FPN's lateral maps ``[N, C, h, w]``, coarsest first (they do not depend on the depth).
    gate_features: ``[N, F]``; gate_logits: ``[N, E]``.
    """

    inputs: EncoderInputs
    laterals: list[torch.Tensor]
    gate_features: torch.Tensor
    gate_logits: torch.Tensor


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
    def resolve_depths(self, depth: DepthSpec, batch: int, gate_logits: torch.Tensor | None = None) -> list[int]:
        """``None`` (all layers), an int, per-image ints, a ``[N]`` int64 tensor, or ``"gate"``
        -> ``N`` host ints in ``0..num_encoder_layers``.

        Ints are checked on the host, so a training step never waits on the device here; a
        tensor or the gate's choice is read back once (a device sync on GPU).
        """
        layers = self.num_encoder_layers
        if depth is None:
            depth = layers
        elif isinstance(depth, str):
            if depth != "gate":
                raise ValueError(f"depth {depth!r}: the only named depth is 'gate'")
            if gate_logits is None:
                raise ValueError("depth='gate' needs the gate logits")
            depth = self.gate.depths(gate_logits)
        elif isinstance(depth, torch.Tensor):
            depth = depth.reshape(-1).long()
            if depth.numel() != batch:
                raise ValueError(f"depth has {depth.numel()} entries for a batch of {batch} images; give one per image")
        return check_depths(depth, batch, layers)

    # ----------------------------------------------------------------- passes
    def _encode_inputs(self, pixels: torch.Tensor, image_sizes=None, gate: bool = True):
        """Backbone, input projections, encoder inputs and (with ``gate``) the gate's pooled
        features: ``(features, projected, inputs, gate_features or None)``."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels have shape {tuple(pixels.shape)}; expected normalised [N, 3, H, W]")
        features = self.backbone(pixels)
        projected = self.pixel_decoder.project(features)
        inputs = self.pixel_decoder.encoder_inputs(projected)
        gate_features = None
        if gate:
            coarsest = projected[0]
            valid = None if image_sizes is None else valid_cells(image_sizes, pixels.shape[-2:], coarsest.shape[-2:])
            gate_features = self.gate.pool(coarsest, valid)
        return features, projected, inputs, gate_features

    def forward_raw(self, pixels: torch.Tensor, depth: DepthSpec = None, image_sizes=None) -> dict:
        """One pass at the given depth(s).

        Args:
            pixels: normalised, padded ``[N, 3, H, W]``.
            depth: see :meth:`resolve_depths`. With host ints (training) nothing here reads
                a device tensor.
            image_sizes: optional ``[(h_i, w_i)]`` host ints, the images' sizes before padding;
                the gate then pools only each image's own cells (so a batch gates as each
                image alone would).
        Returns a dict with ``encoder_layer_out`` (``[N, S, C]`` after each executed layer,
        tokens res5, res4, res3, row-major), ``encoder_input`` ``[N, S, C]``, ``mask_features``
        ``[N, D, H/4, W/4]``, ``multi_scale_features`` (3 maps, coarsest first), ``pred_logits``
        ``[N, Q, K+1]``, ``pred_masks`` ``[N, Q, H/4, W/4]``, ``aux_outputs``, ``depths`` ``[N]``
        int64 on the model's device, ``gate_features`` ``[N, F]``, ``gate_logits`` ``[N, E]``.
        """
        features, _, inputs, gate_features = self._encode_inputs(pixels, image_sizes)
        gate_logits = self.gate(gate_features)
        depths = self.resolve_depths(depth, pixels.shape[0], gate_logits)
        final, layer_outputs = self.pixel_decoder.encoder(inputs, depths, keep_layer_outputs=True)
        mask_features, multi_scale = self.pixel_decoder.decode(final, inputs.shapes, features)
        out = self.decoder(multi_scale, mask_features)
        out.update(
            encoder_layer_out=layer_outputs,
            encoder_input=inputs.tokens,
            mask_features=mask_features,
            multi_scale_features=multi_scale,
            depths=host_ints_to_device(depths, pixels.device),
            gate_features=gate_features,
            gate_logits=gate_logits,
        )
        return out

    def forward(self, pixels: torch.Tensor, depth: DepthSpec = None) -> dict:
        return self.forward_raw(pixels, depth)

    # ----------------------------------------------------------------- inference by depth group
    def forward_trunk(self, pixels: torch.Tensor, image_sizes=None) -> Trunk:
        """The part of :meth:`forward_raw` before the encoder layers, once for a batch: backbone,
        input projections, encoder inputs, FPN laterals and the gate. ``pixels``, ``image_sizes``
        as in :meth:`forward_raw`."""
        features, _, inputs, gate_features = self._encode_inputs(pixels, image_sizes)
        laterals = self.pixel_decoder.laterals(features)
        return Trunk(inputs, laterals, gate_features, self.gate(gate_features))

    def forward_depth(self, trunk: Trunk, depth: int, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The encoder's final state ``[M, S, C]`` of the images ``rows`` (host ints; None = all) of
        ``trunk``, every one at the same ``depth``: each layer runs on the whole sub-batch, so no
        layer gathers or scatters rows (one gather per group, here)."""
        inputs = trunk.inputs
        if rows is not None and len(rows) != inputs.tokens.shape[0]:
            inputs = inputs.select(host_ints_to_device(list(rows), inputs.tokens.device))
        final, _ = self.pixel_decoder.encoder(inputs, int(depth))
        return final

    def forward_head(self, trunk: Trunk, tokens: torch.Tensor, rows: Sequence[int] | None = None) -> dict:
        """FPN and transformer decoder on encoder states ``tokens [M, S, C]`` of the images ``rows``
        of ``trunk``: ``{"pred_logits": [M, Q, K+1], "pred_masks": [M, Q, H/4, W/4]}`` (no aux)."""
        laterals = trunk.laterals  # empty when every backbone level goes to the encoder
        if rows is not None and len(rows) != trunk.gate_logits.shape[0]:
            index = host_ints_to_device(list(rows), tokens.device)
            laterals = [lateral.index_select(0, index) for lateral in laterals]
        mask_features, multi_scale = self.pixel_decoder.decode(tokens, trunk.inputs.shapes, laterals=laterals)
        return self.decoder(multi_scale, mask_features, aux=False)

    def _check_exits(self, exits: Sequence[int]) -> list[int]:
        layers = self.num_encoder_layers
        exits = list(exits)
        if (
            not exits
            or not all(isinstance(k, int) and not isinstance(k, bool) for k in exits)
            or sorted(set(exits)) != exits
            or exits[0] < 0
            or exits[-1] > layers
        ):
            raise ValueError(f"exits {exits} must be strictly increasing integer depths in 0..{layers}")
        return exits

    def _decode_exits(self, features, inputs, exits: list[int], aux: bool) -> tuple[dict, dict]:
        """Encoder once to ``exits[-1]``; FPN and decoder after each exit.

        Returns ``({k: decoder dict + mask_features}, {k: encoder state [N, S, C]})``.
        """
        _, states = self.pixel_decoder.encoder(inputs, exits[-1], keep_layer_outputs=True)
        chosen = {k: inputs.tokens if k == 0 else states[k - 1] for k in exits}
        laterals = self.pixel_decoder.laterals(features)
        outputs = {}
        # Exit after exit, each exactly as a forward at that depth would decode it. Under
        # no_grad, only one exit's decoder activations are alive at a time.
        for k, tokens in chosen.items():
            mask_features, multi_scale = self.pixel_decoder.decode(tokens, inputs.shapes, laterals=laterals)
            outputs[k] = self.decoder(multi_scale, mask_features, aux=aux)
            outputs[k]["mask_features"] = mask_features
        return outputs, chosen

    def forward_exits(self, pixels: torch.Tensor, exits: Sequence[int], aux: bool = True) -> dict[int, dict]:
        """All requested exits on one shared trunk, with autograd through it (training).

        Backbone and encoder run once, to the deepest exit; the pixel decoder's FPN and the
        transformer decoder run after each exit. Each exit's outputs equal
        ``forward_raw(pixels, depth=k)``'s, and back-propagating their summed losses
        gives the sum of the separate passes' gradients.

        Args:
            pixels: normalised, padded ``[N, 3, H, W]``.
            exits: strictly increasing depths in ``0..num_encoder_layers`` (host ints).
            aux: include the decoder's auxiliary predictions (the criterion's deep supervision).
        Returns:
            ``{k: {"pred_logits": [N, Q, K+1], "pred_masks": [N, Q, H/4, W/4],
            "aux_outputs": [...] (with aux), "mask_features": [N, D, H/4, W/4]}}``.
        """
        exits = self._check_exits(exits)
        features, _, inputs, _ = self._encode_inputs(pixels, gate=False)
        outputs, _ = self._decode_exits(features, inputs, exits, aux)
        return outputs

    def forward_all_exits(self, pixels: torch.Tensor, exits: Sequence[int] | None = None) -> dict:
        """Step 2's pass (call it under ``torch.no_grad``): :meth:`forward_exits` without
        auxiliary outputs, plus what the gate reads.

        Returns ``{"exits": [k...], "outputs": {k: {pred_logits, pred_masks, mask_features}},
        "encoder_states": {k: [N, S, C]}, "gate_features": [N, F], "coarsest": [N, C, h, w]}``
        (``coarsest``: the gate's input map, for other poolings).
        """
        exits = self._check_exits(self.config.gate.exits if exits is None else exits)
        features, projected, inputs, gate_features = self._encode_inputs(pixels)
        outputs, states = self._decode_exits(features, inputs, exits, aux=False)
        return {
            "exits": exits,
            "outputs": outputs,
            "encoder_states": states,
            "gate_features": gate_features,
            "coarsest": projected[0],
        }

    # ----------------------------------------------------------------- inference
    def predict(self, images, depth: DepthSpec = None, tasks: Sequence[str] | None = None, **thresholds) -> list[dict]:
        """Mask2Former inference on uint8 RGB images; see :func:`ecom2f.modeling.predict.predict`."""
        from ecom2f.modeling.predict import predict

        return predict(self, images, depth=depth, tasks=tasks, **thresholds)
