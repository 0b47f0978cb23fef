"""ecom2f's panoptic results (Mask2Former's rules) against transformers' ``post_process_panoptic_segmentation``.

End to end, on one image through both networks, the results agree. Where transformers'
post-processing differs from Mask2Former's, each difference (docs/modeling.md, "transformers
and Mask2Former") is shown on crafted logits: the test states what each side returns.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn.functional as F

from ecom2f.modeling.huggingface_checkpoint import HuggingFaceFolder, huggingface_model_config, load_huggingface_into
from ecom2f.modeling.huggingface_keys import canonical_hf_key
from ecom2f.modeling.postprocessing import panoptic_inference
from ecom2f.modeling.predict import predict
from ecom2f.modeling.preprocessing import normalize_and_pad
from tests.modeling.huggingface_tiny import tiny_hf_model, transformers_mask2former

NUM_CLASSES, NUM_THINGS = 7, 4
STUFF = set(range(NUM_THINGS, NUM_CLASSES))
SIZE = 384  # transformers' post-processing first resizes every mask to 384 x 384


def _hf_panoptic(class_logits, mask_logits, target=(SIZE, SIZE), overlap=0.8):
    """transformers' post-processing with Mask2Former's COCO thresholds and stuff merged."""
    transformers_mask2former()
    from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessor

    outputs = types.SimpleNamespace(class_queries_logits=class_logits[None], masks_queries_logits=mask_logits[None])
    return Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        outputs, threshold=0.8, overlap_mask_area_threshold=overlap, label_ids_to_fuse=STUFF, target_sizes=[target])[0]


def _class_logits(labels, scores=None) -> torch.Tensor:
    """``[Q, K+1]`` logits whose softmax gives query q class ``labels[q]`` with probability
    ``scores[q]`` (1.0 exactly by default; the rest on "no object")."""
    logits = torch.full((len(labels), NUM_CLASSES + 1), -1e4)
    for q, label in enumerate(labels):
        score = 1.0 if scores is None else scores[q]
        logits[q, label] = 0.0 if score < 1 else 1e3
        if score < 1:
            logits[q, NUM_CLASSES] = math.log((1 - score) / score)
    return logits


# ----------------------------------------------------------------------------- end to end
def _decisive(hf_model, labels, directions):
    """Makes each query's class and mask its own, so the random network gives real segments: the
    decoder's residual branches are zeroed (every sub-layer is then a LayerNorm of the query), query q
    is the one-hot e_q, the class head reads coordinate q, and the mask head maps e_q to
    ``directions[q]`` in the mask-feature space."""
    module = hf_model.model.transformer_module
    hidden = module.queries_features.weight.shape[1]
    with torch.no_grad():
        for layer in module.decoder.layers:
            for linear in (layer.self_attn.out_proj, layer.cross_attn.out_proj, layer.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        module.queries_features.weight.copy_(10 * torch.eye(len(labels), hidden))
        hf_model.class_predictor.weight.zero_()
        hf_model.class_predictor.bias.zero_()
        for q, label in enumerate(labels):
            hf_model.class_predictor.weight[label, q] = 100.0
        blocks = module.decoder.mask_predictor.mask_embedder.layers
        for block in blocks[:2]:
            block.layers[0].weight.copy_(torch.eye(hidden))
            block.layers[0].bias.zero_()
        last = blocks[2].layers[0]
        last.weight.zero_()
        last.bias.zero_()
        last.weight[:, : len(labels)] = directions.T


def test_predict_gives_transformers_panoptic_result_on_the_same_image():
    hf_model = tiny_hf_model("resnet18", seed=7, num_queries=4)
    direction = torch.randn(32, generator=torch.Generator().manual_seed(8))
    # A thing and a stuff query with opposite masks (each wins where its mask is positive), two "no object".
    labels = [1, 5, NUM_CLASSES, NUM_CLASSES]
    _decisive(hf_model, labels, torch.stack([direction, -direction, direction / 2, -direction / 2]))
    state = {canonical_hf_key(key): value for key, value in hf_model.state_dict().items()}
    found = HuggingFaceFolder(hf_model.config.to_dict(), None, None, state)
    config, _ = huggingface_model_config(found, num_things=NUM_THINGS)
    from ecom2f.modeling import build_model

    model = build_model(config).eval()
    load_huggingface_into(model, found)

    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    ids, segments = predict(model, image, tasks=("panoptic",))[0]["panoptic_seg"]
    pixels, _ = normalize_and_pad([image], config.pixel_mean, config.pixel_std, config.size_divisibility)
    with torch.no_grad():
        outputs = hf_model(pixels)
    theirs = _hf_panoptic(outputs.class_queries_logits[0], outputs.masks_queries_logits[0])

    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 1, True), (2, 5, False)]
    assert [(s["id"], s["label_id"]) for s in theirs["segments_info"]] == [(1, 1), (2, 5)]
    assert 0.05 < (ids == 1).float().mean() < 0.95  # both segments are real regions
    # The masks are opposite, so every pixel's winner has probability >= 0.5: no documented difference
    # applies, and only pixels whose mask logit is within rounding of 0 may flip.
    assert int((ids != theirs["segmentation"]).sum()) <= 8


# ----------------------------------------------------------------------------- documented differences
def test_difference_low_probability_winners_are_void_in_mask2former_but_labelled_by_transformers():
    masks = torch.full((2, SIZE, SIZE), -10.0)
    masks[0, :, : SIZE // 2] = 10.0
    masks[1, :, SIZE // 2:] = 10.0
    masks[0, 300:, 150:250] = -1.0  # neither query is >= 0.5 here; query 0 is the likelier
    masks[1, 300:, 150:250] = -2.0
    logits = _class_logits([1, 5])
    ids, segments = panoptic_inference(logits, masks, range(NUM_THINGS))
    theirs = _hf_panoptic(logits, masks)
    weak = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    weak[300:, 150:250] = True
    assert len(segments) == len(theirs["segments_info"]) == 2
    assert torch.equal(ids[~weak], theirs["segmentation"][~weak])
    assert int(ids[weak].abs().sum()) == 0  # Mask2Former: a pixel needs its winner's mask >= 0.5
    assert bool((theirs["segmentation"][weak] == 1).all())  # transformers: argmax alone


def test_difference_transformers_measures_a_mask_weighted_by_its_score():
    """Mask2Former keeps a query whose mask is >= 0.5 on its region; transformers thresholds score x
    mask, so a 0.9-confident query with mask 0.52 has no area and is dropped."""
    masks = torch.full((1, SIZE, SIZE), -10.0)
    masks[0, 100:200, 100:200] = math.log(0.52 / 0.48)
    logits = _class_logits([2], scores=[0.9])
    ids, segments = panoptic_inference(logits, masks, range(NUM_THINGS))
    theirs = _hf_panoptic(logits, masks)
    assert segments == [{"id": 1, "isthing": True, "category_id": 2}]
    assert int((ids == 1).sum()) == 100 * 100
    assert theirs["segments_info"] == [] and int(theirs["segmentation"].abs().sum()) == 0


def test_difference_an_area_ratio_of_exactly_the_threshold_is_kept_by_mask2former_only():
    """Mask2Former keeps a segment whose area ratio is >= the overlap threshold, transformers one
    whose float32 ratio is > it. At COCO's 0.8 they agree (float32(0.8) > 0.8); at a threshold
    binary fractions hold exactly (0.75 here) an exact ratio is dropped by transformers only."""
    masks = torch.full((2, SIZE, SIZE), -10.0)
    masks[1] = 10.0
    masks[1, 100:110, 100:110] = -10.0
    masks[1, 100:105, 100:105] = 10.0  # query 1 takes 25 of query 0's 100 pixels: ratio 75 / 100
    masks[0, 100:110, 100:110] = 5.0
    logits = _class_logits([0, 6])
    ids, segments = panoptic_inference(logits, masks, range(NUM_THINGS), overlap_threshold=0.75)
    theirs = _hf_panoptic(logits, masks, overlap=0.75)
    assert [s["category_id"] for s in segments] == [0, 6]
    assert [s["label_id"] for s in theirs["segments_info"]] == [6]
    assert int((ids == 1).sum()) == 75 and int((theirs["segmentation"] == 0).sum()) == 75
    at_coco = _hf_panoptic(logits, masks, overlap=0.8)
    assert [s["label_id"] for s in at_coco["segments_info"]] == [6]  # 0.75 < 0.8: dropped by both
    assert [s["category_id"] for s in panoptic_inference(logits, masks, range(NUM_THINGS))[1]] == [6]


def test_difference_transformers_reuses_an_id_after_a_merged_stuff_class():
    """transformers resets its id counter to a merged stuff segment's id, so the next new segment
    takes an id that is already used: two segments end up under one id."""
    masks = torch.full((5, SIZE, SIZE), -10.0)
    for q in range(5):
        masks[q, :, q * 76: (q + 1) * 76 + (4 if q == 4 else 0)] = 10.0
    logits = _class_logits([0, 5, 1, 5, 0])  # thing, stuff, thing, the same stuff, thing
    ids, segments = panoptic_inference(logits, masks, range(NUM_THINGS))
    theirs = _hf_panoptic(logits, masks)
    assert [(s["id"], s["category_id"]) for s in segments] == [(1, 0), (2, 5), (3, 1), (4, 0)]
    assert [(s["id"], s["label_id"]) for s in theirs["segments_info"]] == [(1, 0), (2, 5), (3, 1), (2, 5), (3, 0)]
    assert sorted(torch.unique(theirs["segmentation"]).tolist()) == [1, 2, 3]  # class 1 and the last 0 share id 3
    assert sorted(torch.unique(ids).tolist()) == [1, 2, 3, 4]


def test_difference_transformers_resizes_masks_to_384_then_probabilities_to_the_image_size():
    """transformers assumes its processor resized the image to 384 x 384: mask logits go to 384 x 384,
    then their probabilities to the target size. Mask2Former resizes the logits from the mask size to
    the (padded) input size, crops, and resizes to the output size, then takes probabilities."""
    torch.manual_seed(10)
    low = torch.randn(1, 64, 64) * 4
    masks = torch.cat([low, -low])  # opposite masks: every winner is >= 0.5
    logits = _class_logits([1, 5])
    theirs = _hf_panoptic(logits, masks, target=(256, 256))

    def resize(x, size):
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]

    their_probabilities = resize(resize(masks, (SIZE, SIZE)).sigmoid(), (256, 256)).double()
    transformers_rule = panoptic_inference(logits.double(), torch.logit(their_probabilities), range(NUM_THINGS))[0]
    mask2former_rule = panoptic_inference(logits, resize(masks, (256, 256)), range(NUM_THINGS))[0]
    assert torch.equal(transformers_rule, theirs["segmentation"])
    assert int((mask2former_rule != theirs["segmentation"]).sum()) > 0


def test_difference_no_segment_is_minus_one_in_transformers_and_zero_in_mask2former():
    masks = torch.zeros(2, SIZE, SIZE)
    logits = _class_logits([NUM_CLASSES, NUM_CLASSES])
    ids, segments = panoptic_inference(logits, masks, range(NUM_THINGS))
    theirs = _hf_panoptic(logits, masks)
    assert segments == [] and int(ids.abs().sum()) == 0
    assert theirs["segments_info"] == [] and bool((theirs["segmentation"] == -1).all())
