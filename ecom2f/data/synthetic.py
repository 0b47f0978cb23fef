"""A synthetic COCO-panoptic dataset whose images differ in complexity (deterministic by seed).

Two ways of drawing a split (``scenes``):

- ``"mixed"`` (the default, generator version 2): two kinds of scene in a stated proportion,
  as real datasets mix them. *Simple* scenes hold 1-3 large, separated, saturated shapes on a
  flat sky/ground background; *cluttered* scenes hold 9-14 small shapes that overlap, on
  textured stuff (a wavy horizon, a brick wall, grain) with distractor strokes and sometimes a
  crowd of tiny shapes. Exactly ``round(n * cluttered_fraction)`` of the first n images are
  cluttered, spread evenly through the split, so both splits carry the same mix.
- ``"graded"`` (version 1, the previous default, kept so old splits can be redrawn
  byte for byte): each image draws a difficulty ``t`` in [0, 1] that drives everything hard
  about it, from easy (t ~ 0: 0-2 large shapes on a straight horizon) to hard (t ~ 1: up to
  14 small overlapping shapes blended towards the background, textured, on clutter strokes,
  with sensor noise and blur).

The JSON records per image its ``scene`` (``simple`` / ``cluttered``, or ``graded``), a
``difficulty`` score computed from what was actually drawn (object count and size, occluded
fraction, contrast, noise, blur, clutter) and the ``difficulty_factors`` behind it, and in
``info`` the generator version, the scene kind and the cluttered fraction. Thing categories
are ids 1..7, stuff 10..12.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ecom2f.data.fileio import write_bytes_atomic
from ecom2f.data.image_io import id_to_rgb
from ecom2f.data.synthetic_shapes import STUFF_CLASSES, THING_CLASSES, bricks, shape_mask, smooth_noise, texture
from ecom2f.errors import BadInputError

MIN_VISIBLE_PX = 12  # smaller visible fragments of an occluded shape become void
MAX_OBJECTS = 14
MAX_NOISE_SIGMA = 18.0
MAX_BLUR_SIGMA = 1.4
MAX_CLUTTER = 12

# Version 2: the mixed simple / cluttered scenes (and their JSON fields); 1: the graded scenes.
GENERATOR_VERSION = 2
SCENES = ("mixed", "graded")
CLUTTERED_FRACTION = 0.5  # the default share of cluttered scenes in a mixed split


@dataclasses.dataclass(frozen=True)
class SceneStyle:
    """How one image is drawn: what each drawing step takes from the scene kind.

    Counts are ``(low, high)`` inclusive; a ``*_max`` value is scaled by a uniform draw in the
    step that uses it (so the random draws are the same for every style).
    """

    scene: str
    horizon_wave: float      # amplitude of the sky/ground border's wave, px
    building_probability: float
    stuff_texture: float     # amplitude of grain, blotches and bricks on stuff, grey levels
    clutter_max: float       # distractor strokes: round(clutter_max * U(0.5, 1))
    objects: tuple[int, int]
    radius: float            # a shape's radius before its U(0.75, 1.25) jitter, px
    overlap_probability: float
    blend_max: float         # low contrast: fill pulled towards the background by blend_max * U(0.6, 1)
    thing_texture: float
    crowd_probability: float
    noise_max: float         # sensor noise sigma: noise_max * U(0.5, 1)
    blur_max: float          # blur sigma: blur_max * U(0.3, 1)


def graded_style(t: float, size: int) -> SceneStyle:
    """Version 1's image of difficulty ``t`` in [0, 1] (formulas kept verbatim: same draws, same bytes)."""
    return SceneStyle(
        scene="graded", horizon_wave=t * size * 0.08, building_probability=0.2 + 0.7 * t,
        stuff_texture=6 + 34 * t, clutter_max=t * MAX_CLUTTER,
        objects=(round(t * 6), min(MAX_OBJECTS, 2 + round(t * 12))), radius=size * (0.22 - 0.15 * t),
        overlap_probability=t * 0.5, blend_max=0.7 * t, thing_texture=8 + 40 * t, crowd_probability=0.4 * t,
        noise_max=MAX_NOISE_SIGMA * t, blur_max=MAX_BLUR_SIGMA * t,
    )


def simple_style(size: int) -> SceneStyle:
    """A few large, separated, saturated shapes on a flat sky/ground background."""
    return SceneStyle(
        scene="simple", horizon_wave=0.0, building_probability=0.0, stuff_texture=3.0, clutter_max=0.0,
        objects=(1, 3), radius=size * 0.21, overlap_probability=0.0, blend_max=0.0, thing_texture=8.0,
        crowd_probability=0.0, noise_max=2.0, blur_max=0.0,
    )


def cluttered_style(size: int) -> SceneStyle:
    """Many small overlapping shapes on textured stuff with distractor strokes."""
    return SceneStyle(
        scene="cluttered", horizon_wave=size * 0.08, building_probability=0.9, stuff_texture=40.0,
        clutter_max=float(MAX_CLUTTER), objects=(9, MAX_OBJECTS), radius=size * 0.065, overlap_probability=0.5,
        blend_max=0.3, thing_texture=40.0, crowd_probability=0.3, noise_max=6.0, blur_max=0.5,
    )


def is_cluttered(index: int, fraction: float) -> bool:
    """Whether image ``index`` of a mixed split is cluttered: exactly ``round(n * fraction)`` of
    the first n images are (within one), spread evenly, whatever n."""
    return int(np.floor((index + 1) * fraction + 0.5)) > int(np.floor(index * fraction + 0.5))


def categories() -> list[dict]:
    things = [
        {"id": i + 1, "name": name, "isthing": 1, "color": list(color), "supercategory": "shape"}
        for i, (name, color, _) in enumerate(THING_CLASSES)
    ]
    stuff = [
        {"id": cid, "name": name, "isthing": 0, "color": list(color), "supercategory": "stuff"}
        for cid, name, color in STUFF_CLASSES
    ]
    return things + stuff


def _stuff(rng: np.random.Generator, style: SceneStyle, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background: category id map int64 [S, S] and image float [S, S, 3]."""
    size = xx.shape[0]
    horizon = size * rng.uniform(0.35, 0.65)
    wave = style.horizon_wave * np.sin(2 * np.pi * rng.uniform(1, 3) * xx / size + rng.uniform(0, 2 * np.pi))
    sky_id, ground_id, wall_id = (c[0] for c in STUFF_CLASSES)
    labels = np.where(yy < horizon + wave, sky_id, ground_id).astype(np.int64)
    if rng.random() < style.building_probability:  # a building standing on the ground
        x0, x1 = np.sort(rng.uniform(0, size, 2))
        if x1 - x0 < size * 0.2:
            x1 = min(size, x0 + size * 0.3)
        top = size * rng.uniform(0.05, 0.3)
        labels[(xx >= x0) & (xx < x1) & (yy >= top) & (labels == sky_id)] = wall_id

    image = np.zeros((size, size, 3))
    colors = {cid: np.array(color, dtype=np.float64) for cid, _, color in STUFF_CLASSES}
    jitter = {cid: rng.uniform(-25, 25, 3) for cid in colors}
    grain = rng.normal(0, 1, (size, size))
    blotches = smooth_noise(rng, size, 6)
    amplitude = style.stuff_texture
    for cid, color in colors.items():
        region = labels == cid
        base = color + jitter[cid]
        if cid == sky_id:
            shade = (yy / size - 0.5)[..., None] * np.array([30.0, 25.0, 10.0]) + 0.5 * amplitude * blotches[..., None]
        elif cid == ground_id:
            shade = (0.6 * amplitude * grain + 0.8 * amplitude * blotches)[..., None]
        else:
            shade = (0.8 * amplitude * bricks(xx, yy, rng.uniform(5, 9)) + 0.3 * amplitude * grain)[..., None]
        image[region] = (base + shade)[region]
    return labels, image


def _place(rng, overlap_probability: float, size: int, radius: float, placed: list) -> tuple[float, float]:
    """Centre of a shape: kept apart from the placed ones, or allowed to overlap them."""
    margin = 0.5 * radius
    best, best_gap = None, -np.inf
    for _ in range(30):
        cx, cy = rng.uniform(margin, size - margin, 2)
        gap = min((np.hypot(cx - px, cy - py) - radius - pr for px, py, pr in placed), default=np.inf)
        if gap > 3 or rng.random() < overlap_probability:
            return cx, cy
        if gap > best_gap:
            best, best_gap = (cx, cy), gap
    return best


def _check_scenes(scenes: str, cluttered_fraction: float) -> None:
    if scenes not in SCENES:
        raise BadInputError(f"scenes={scenes!r}: choose one of {list(SCENES)} (default 'mixed')")
    if not 0.0 <= cluttered_fraction <= 1.0:
        raise BadInputError(f"cluttered_fraction={cluttered_fraction}: must lie in [0, 1] (the share of cluttered "
                            f"scenes; default {CLUTTERED_FRACTION})")


def render(index: int, image_size: int = 160, seed: int = 0, scenes: str = "mixed",
           cluttered_fraction: float = CLUTTERED_FRACTION) -> dict:
    """Draw image ``index`` of the dataset of ``seed``.

    Returns {"image": uint8 [S, S, 3], "id_map": int64 [S, S] (0 = void),
    "segments_info": [...], "scene": "simple" | "cluttered" | "graded", "difficulty": float,
    "difficulty_factors": {...}}.
    """
    if image_size < 32:
        raise BadInputError(f"image_size={image_size} is too small to draw shapes; use 64 or more (default 160)")
    _check_scenes(scenes, cluttered_fraction)
    rng = np.random.default_rng([seed, index])  # the draws below happen in this order, image after image
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if scenes == "graded":
        style = graded_style(float(rng.uniform(0, 1)), size)
    else:
        style = cluttered_style(size) if is_cluttered(index, cluttered_fraction) else simple_style(size)
    stuff_labels, image = _stuff(rng, style, xx, yy)
    clutter = _draw_clutter(rng, style, image, xx, yy)
    ids, objects, contrast_loss = _draw_things(rng, style, image, xx, yy)
    _draw_crowd(rng, style, image, xx, yy, ids, objects)
    id_map, segments, occluded_px, drawn_px = _panoptic_ids(ids, objects, stuff_labels)
    rgb, noise_sigma, blur_sigma = _degrade(rng, style, image)
    _add_areas_and_boxes(segments, id_map)
    factors = _difficulty_factors(objects, size, occluded_px, drawn_px, contrast_loss, noise_sigma, blur_sigma, clutter)
    return {
        "image": rgb,
        "id_map": id_map,
        "segments_info": segments,
        "scene": style.scene,
        "difficulty": round(float(np.mean(list(factors.values()))), 4),
        "difficulty_factors": factors,
    }


def _draw_clutter(rng, style: SceneStyle, image: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> int:
    """Strokes that belong to no thing class (distractors); returns how many."""
    size = image.shape[0]
    clutter = round(style.clutter_max * rng.uniform(0.5, 1))
    for _ in range(clutter):
        x0, y0 = rng.uniform(0, size, 2)
        angle, length, width = rng.uniform(0, np.pi), rng.uniform(0.05, 0.25) * size, rng.uniform(1, 3)
        along = (xx - x0) * np.cos(angle) + (yy - y0) * np.sin(angle)
        across = -(xx - x0) * np.sin(angle) + (yy - y0) * np.cos(angle)
        stroke = (np.abs(across) <= width) & (along >= 0) & (along <= length)
        image[stroke] = rng.uniform(0, 255, 3)
    return clutter


def _draw_things(rng, style: SceneStyle, image: np.ndarray, xx: np.ndarray, yy: np.ndarray):
    """The thing instances: ``(ids [S, S], objects, contrast loss per object)``."""
    size = image.shape[0]
    low, high = style.objects
    num_objects = int(rng.integers(low, high + 1))
    ids = np.zeros((size, size), dtype=np.int64)
    objects, placed, contrast_loss = [], [], []
    for k in range(num_objects):
        cls = int(rng.integers(len(THING_CLASSES)))
        name, color, pattern = THING_CLASSES[cls]
        radius = style.radius * rng.uniform(0.75, 1.25)
        cx, cy = _place(rng, style.overlap_probability, size, radius, placed)
        placed.append((cx, cy, radius))
        mask = shape_mask(name, xx, yy, cx, cy, radius, rng.uniform(0, 2 * np.pi))
        if not mask.any():
            continue
        blend = style.blend_max * rng.uniform(0.6, 1.0)  # low contrast: pull towards what lies beneath
        fill = (1 - blend) * np.array(color, dtype=np.float64) + blend * image[mask].mean(axis=0)
        pattern_px = texture(pattern, xx, yy, rng.uniform(4, 9), rng.uniform(0, np.pi))
        image[mask] = fill + (style.thing_texture * pattern_px[mask])[:, None]
        segment_id = (cls + 1) * 1000 + k + 1
        ids[mask] = segment_id
        objects.append({"id": segment_id, "category_id": cls + 1, "iscrowd": 0, "drawn_px": int(mask.sum())})
        contrast_loss.append(blend)
    return ids, objects, contrast_loss


def _draw_crowd(rng, style: SceneStyle, image: np.ndarray, xx: np.ndarray, yy: np.ndarray, ids: np.ndarray,
                objects: list[dict]) -> None:
    """Sometimes a crowd: a cluster of tiny shapes annotated as one segment."""
    if rng.random() >= style.crowd_probability:
        return
    size = image.shape[0]
    cls = int(rng.integers(len(THING_CLASSES)))
    name, color, _ = THING_CLASSES[cls]
    gx, gy = rng.uniform(0.2 * size, 0.8 * size, 2)
    crowd = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(5, 10))):
        crowd |= shape_mask(name, xx, yy, gx + rng.normal(0, 0.06 * size), gy + rng.normal(0, 0.06 * size),
                            size * 0.025, rng.uniform(0, 2 * np.pi))
    image[crowd] = np.array(color, dtype=np.float64) * 0.85
    segment_id = (cls + 1) * 1000 + 999
    ids[crowd] = segment_id
    objects.append({"id": segment_id, "category_id": cls + 1, "iscrowd": 1, "drawn_px": int(crowd.sum())})


def _panoptic_ids(ids: np.ndarray, objects: list[dict], stuff_labels: np.ndarray):
    """Things that stayed visible enough, then the stuff regions under the rest: ``(id_map, segments,
    occluded pixels, drawn pixels)``; slivers nobody could label become void (0)."""
    id_map = np.where(ids > 0, ids, 0)
    segments, occluded_px, drawn_px = [], 0, 0
    for obj in objects:
        visible = int((id_map == obj["id"]).sum())
        drawn_px += obj["drawn_px"]
        occluded_px += obj["drawn_px"] - visible
        if visible < MIN_VISIBLE_PX:
            id_map[id_map == obj["id"]] = -1
            continue
        segments.append({"id": obj["id"], "category_id": obj["category_id"], "iscrowd": obj["iscrowd"]})
    for cid, _, _ in STUFF_CLASSES:
        region = (ids == 0) & (stuff_labels == cid)
        if region.any():
            id_map[region] = cid * 1000
            segments.append({"id": cid * 1000, "category_id": cid, "iscrowd": 0})
    id_map[id_map < 0] = 0
    return id_map, segments, occluded_px, drawn_px


def _degrade(rng, style: SceneStyle, image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Blur and sensor noise: ``(uint8 image, noise sigma, blur sigma)``."""
    noise_sigma = style.noise_max * rng.uniform(0.5, 1.0)
    blur_sigma = style.blur_max * rng.uniform(0.3, 1.0)
    if blur_sigma > 0.2:
        image = gaussian_filter(image, sigma=(blur_sigma, blur_sigma, 0))
    image = image + rng.normal(0, noise_sigma, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), noise_sigma, blur_sigma


def _add_areas_and_boxes(segments: list[dict], id_map: np.ndarray) -> None:
    for segment in segments:
        mask = id_map == segment["id"]
        rows, cols = np.nonzero(mask)
        segment["area"] = int(mask.sum())
        segment["bbox"] = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1),
                           int(rows.max() - rows.min() + 1)]


def _difficulty_factors(objects, size, occluded_px, drawn_px, contrast_loss, noise_sigma, blur_sigma,
                        clutter) -> dict[str, float]:
    """Each cause of difficulty on a 0..1 scale; an image's difficulty is their mean."""
    things = [o for o in objects if not o["iscrowd"]]
    mean_radius_frac = float(np.mean([np.sqrt(o["drawn_px"] / np.pi) / size for o in things])) if things else 0.25
    factors = {
        "num_objects": len(things) / MAX_OBJECTS,
        "small_objects": float(np.clip(1 - mean_radius_frac / 0.25, 0, 1)) if things else 0.0,
        "occlusion": occluded_px / drawn_px if drawn_px else 0.0,
        "low_contrast": float(np.mean(contrast_loss)) / 0.7 if contrast_loss else 0.0,
        "noise": noise_sigma / MAX_NOISE_SIGMA,
        "blur": blur_sigma / MAX_BLUR_SIGMA,
        "clutter": clutter / MAX_CLUTTER,
    }
    return {k: round(float(v), 4) for k, v in factors.items()}


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def generate(
    out_dir: str | os.PathLike,
    num_images: int = 200,
    image_size: int = 160,
    seed: int = 0,
    jpeg_quality: int = 92,
    scenes: str = "mixed",
    cluttered_fraction: float = CLUTTERED_FRACTION,
) -> Path:
    """Write ``images/*.jpg``, ``panoptic/*.png`` and ``panoptic.json`` under out_dir.

    Returns the JSON path. The same arguments always give the same files; ``scenes="graded"``
    gives version 1's files (the default before the mixed scenes).
    """
    if num_images < 1:
        raise BadInputError(f"num_images={num_images}: generate at least one image (--num-images 1 or more)")
    _check_scenes(scenes, cluttered_fraction)
    out = Path(out_dir)
    images, annotations = [], []
    for index in range(num_images):
        drawn = render(index, image_size, seed, scenes, cluttered_fraction)
        stem = f"{index + 1:06d}"
        write_bytes_atomic(out / "images" / f"{stem}.jpg", _encode(drawn["image"], "JPEG", quality=jpeg_quality))
        write_bytes_atomic(out / "panoptic" / f"{stem}.png", _encode(id_to_rgb(drawn["id_map"]), "PNG"))
        images.append(
            {
                "id": index + 1,
                "file_name": f"{stem}.jpg",
                "height": image_size,
                "width": image_size,
                "difficulty": drawn["difficulty"],
            }
        )
        annotations.append(
            {
                "image_id": index + 1,
                "file_name": f"{stem}.png",
                "segments_info": drawn["segments_info"],
                "scene": drawn["scene"],
                "difficulty": drawn["difficulty"],
                "difficulty_factors": drawn["difficulty_factors"],
            }
        )
    document = {
        "info": {
            "description": "ecom2f synthetic panoptic shapes",
            "seed": seed,
            "image_size": image_size,
            "num_images": num_images,
            "generator_version": GENERATOR_VERSION if scenes == "mixed" else 1,
            "scenes": scenes,
            **({"cluttered_fraction": cluttered_fraction} if scenes == "mixed" else {}),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    json_path = out / "panoptic.json"
    write_bytes_atomic(json_path, json.dumps(document).encode())
    return json_path
