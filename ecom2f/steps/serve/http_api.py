"""The HTTP contract of ``ecom2f serve``, apart from Ray: what a request may hold, what each answer
holds, and the status of each refusal. Pure functions of bytes and dicts, tested without a server.

Request: ``POST <route>`` with the image as the body (any image type; ``Content-Type: image/*`` or
``application/octet-stream``) or as ``multipart/form-data`` (the part named ``image``, else the first
file). Query (or form) fields: ``budget`` (a gate's name; default: the deployment's), or ``depth``
(a fixed encoder depth), and ``masks=rle|png`` (default ``rle``).

Answer (JSON): ``height, width, budget, depth, encoder_gflops, total_gflops, latency_ms`` (``model``:
the image's share of its batch's model time; ``request``: from the request's arrival to its answer),
``batch_size`` (requests in the model call), and per task: ``panoptic`` (``segments``: id,
category_id, name, isthing, area, bbox, and an RLE ``mask`` each; with ``masks=png`` a ``png`` of the
id map instead, base64, ``id = R + 256 G + 256^2 B``), ``instances`` (category_id, name, score, RLE
``mask`` or a 1-bit ``png``), ``semantic`` (``classes`` present with their RLE ``mask``; or a grey ``png``
of class ids). RLE masks are COCO's (``size`` [h, w], ``counts`` text; pycocotools decodes them).

Refusals: 400 (not an image, bad fields, unknown budget: the message lists the budgets), 404
(another path), 405 (another method), 413 (a body above ``serving.serve.max_request_mb`` or an image
above ``serving.max_pixels``).
"""

from __future__ import annotations

import base64
import email
import email.policy
from urllib.parse import parse_qs

import numpy as np

from ecom2f.steps.predict.formats import encode_masks, panoptic_png_bytes, png_bytes, semantic_png_bytes

__all__ = ["RequestError", "answer", "parse_fields", "parse_image"]

MASK_FORMATS = ("rle", "png")


class RequestError(Exception):
    """A request the service refuses: ``status`` (HTTP) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_image(content_type: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """``(image bytes, form fields)`` of a request body: raw bytes, or a multipart form's image part."""
    if not body:
        raise RequestError(400, "the request has no body: send the image as the body or as a multipart 'image' field")
    if not content_type.lower().startswith("multipart/"):
        return body, {}
    message = email.message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
                                       policy=email.policy.HTTP)
    if not message.is_multipart():
        raise RequestError(400, "a multipart body that cannot be parsed (check its boundary)")
    fields, files = {}, []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name == "image":
            files.append((name, payload))
        elif name:
            fields[name] = payload.decode("utf-8", "replace").strip()
    chosen = next((payload for name, payload in files if name == "image"), files[0][1] if files else None)
    if chosen is None:
        raise RequestError(400, "the multipart form has no file: send the image in a field named 'image'")
    return chosen, fields


def parse_fields(query: str, form: dict[str, str]) -> dict:
    """``{"budget", "depth", "masks"}`` from the query string and form fields (the form wins)."""
    values = {key: items[-1] for key, items in parse_qs(query, keep_blank_values=False).items()}
    values.update(form)
    unknown = sorted(set(values) - {"budget", "depth", "masks"})
    if unknown:
        raise RequestError(400, f"unknown request fields {unknown}; allowed: budget, depth, masks")
    depth = values.get("depth")
    if depth is not None:
        try:
            depth = int(depth)
        except ValueError:
            raise RequestError(400, f"depth {depth!r} is not an integer") from None
    masks = values.get("masks", "rle")
    if masks not in MASK_FORMATS:
        raise RequestError(400, f"masks {masks!r}: choose one of {', '.join(MASK_FORMATS)}")
    return {"budget": values.get("budget"), "depth": depth, "masks": masks}


def answer(result: dict, categories: list[dict], masks: str) -> dict:
    """The JSON answer of one image from :func:`ecom2f.steps.predict.formats.compact`'s ``result``."""
    height, width = result["size"]
    out = {"height": height, "width": width,
           **{key: result[key] for key in ("budget", "depth", "encoder_gflops", "total_gflops")}}
    if "ids" in result:
        out["panoptic"] = _panoptic(result["ids"], result["segments"], categories, masks)
    if "instances" in result:
        out["instances"] = _instances(result["instances"], categories, masks, (height, width))
    if "semantic" in result:
        out["semantic"] = _semantic(result["semantic"], categories, masks)
    return out


def _b64_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _panoptic(ids: np.ndarray, segments: list[dict], categories: list[dict], masks: str) -> dict:
    described, stacked = [], []
    for segment in segments:
        mask = ids == segment["id"]
        if not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        category = categories[segment["category_id"]]
        described.append({"id": int(segment["id"]), "category_id": category["id"], "name": category["name"],
                          "isthing": bool(segment["isthing"]), "area": int(mask.sum()),
                          "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]})
        stacked.append(mask)
    if masks == "png":
        return {"segments": described, "png": _b64_png(panoptic_png_bytes(ids))}
    encoded = encode_masks(np.stack(stacked)) if stacked else []
    return {"segments": [{**segment, "mask": rle} for segment, rle in zip(described, encoded)]}


def _instances(instances: dict, categories: list[dict], masks: str, size: tuple[int, int]) -> list[dict]:
    found = []
    for rle, score, klass in zip(instances["rle"], instances["scores"], instances["classes"]):
        category = categories[int(klass)]
        entry = {"category_id": category["id"], "name": category["name"], "score": float(score), "mask": rle}
        if masks == "png":
            from pycocotools import mask as mask_utils

            bits = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
            entry["mask"] = _b64_png(png_bytes(bits))
        found.append(entry)
    return found


def _semantic(labels: np.ndarray, categories: list[dict], masks: str) -> dict:
    present = [int(c) for c in np.unique(labels)]
    classes = [{"contiguous_id": c, "category_id": categories[c]["id"], "name": categories[c]["name"]}
               for c in present]
    if masks == "png":
        return {"classes": classes, "png": _b64_png(semantic_png_bytes(labels))}
    encoded = encode_masks(np.stack([labels == c for c in present]))
    return {"classes": [{**entry, "mask": rle} for entry, rle in zip(classes, encoded)]}
