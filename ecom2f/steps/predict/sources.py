"""What ``ecom2f predict`` reads: a folder, a list file, an s3:// prefix, one image, or a COCO JSON's images.

Each input image becomes an :class:`ImageSource`: where to read it, its ``image_id`` (a COCO
JSON's id, so the predictions pair with that JSON's ground truth; else its name) and ``name``,
the stem of every file written for it (unique, file-system safe).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from ecom2f import storage
from ecom2f.errors import BadInputError, MissingFileError

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "PredictInput", "list_inputs"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImageSource:
    uri: str
    image_id: int | str
    name: str


@dataclass
class PredictInput:
    kind: str  # "folder", "s3", "list", "coco", "image"
    sources: list[ImageSource]
    categories: list[dict] | None = None  # a COCO JSON's category list


def list_inputs(input_uri: str, image_root: str | None = None) -> PredictInput:
    """The images of ``input_uri``, sorted (folders and prefixes are searched recursively for
    :data:`IMAGE_EXTENSIONS`, any case). ``image_root``: where a COCO JSON's ``file_name``s live.

    Raises MissingFileError (nothing at ``input_uri``) and BadInputError (no image found, a JSON
    that is not COCO, a COCO JSON without ``image_root``).
    """
    uri = str(input_uri)
    lower = uri.lower()
    if lower.endswith(".json"):
        found = _coco_input(uri, image_root)
    elif lower.endswith(LIST_EXTENSIONS):
        found = PredictInput("list", _named([_resolve(line, _parent(uri)) for line in _list_lines(uri)], base=None))
    elif lower.endswith(IMAGE_EXTENSIONS):
        _require(uri)
        found = PredictInput("image", _named([uri], base=None))
    else:
        found = _folder_input(uri)
    if not found.sources:
        raise BadInputError(f"no images in {uri} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return found


def _require(uri: str) -> None:
    if not storage.exists(uri):
        raise MissingFileError(f"predict input {uri} does not exist")


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if storage.is_s3(uri) else os.path.dirname(os.path.abspath(uri))


def _resolve(path: str, base: str) -> str:
    if storage.is_s3(path) or "://" in path or os.path.isabs(path):
        return path
    return storage.join(base, path)


def _list_lines(uri: str) -> list[str]:
    _require(uri)
    lines = [line.strip() for line in storage.read_text(uri).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _folder_input(uri: str) -> PredictInput:
    if not storage.is_s3(uri):
        if not os.path.exists(uri):
            raise MissingFileError(f"predict input {uri} does not exist (give a folder, a list file, an s3:// "
                                   "prefix, an image or a COCO JSON)")
        if not os.path.isdir(uri):
            raise BadInputError(f"predict input {uri} is neither a folder, a list file ({', '.join(LIST_EXTENSIONS)}), "
                                f"an image ({', '.join(IMAGE_EXTENSIONS)}) nor a COCO JSON")
    files = [f for f in storage.list_uris(uri, recursive=True) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return PredictInput("s3" if storage.is_s3(uri) else "folder", _named(sorted(files), base=uri))


def _coco_input(uri: str, image_root: str | None) -> PredictInput:
    _require(uri)
    try:
        document = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as error:
        raise BadInputError(f"{uri} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise BadInputError(f"{uri} has no 'images' list: give a COCO JSON (instances or panoptic)")
    if image_root is None:
        raise BadInputError(f"a COCO JSON input needs the folder of its images: pass --image-root (for {uri})")
    sources, names = [], set()
    for entry in document["images"]:
        if "id" not in entry or "file_name" not in entry:
            raise BadInputError(f"{uri}: an image entry lacks 'id' or 'file_name' ({entry})")
        name = _unique(_safe(os.path.splitext(entry["file_name"])[0]), names)
        sources.append(ImageSource(storage.join(image_root, entry["file_name"]), entry["id"], name))
    categories = document.get("categories")
    return PredictInput("coco", sources, categories if isinstance(categories, list) else None)


def _named(uris: list[str], base: str | None) -> list[ImageSource]:
    """Sources named by their path under ``base`` (folders) or their stem (lists), made unique."""
    names: set[str] = set()
    sources = []
    for uri in uris:
        if base is not None:
            relative = uri[len(base.rstrip("/")) + 1:] if uri.startswith(base.rstrip("/")) else uri
        else:
            relative = uri.rstrip("/").rsplit("/", 1)[-1]
        stem = os.path.splitext(relative)[0].replace(os.sep, "/")
        name = _unique(_safe(stem.replace("/", "__")), names)
        sources.append(ImageSource(uri, name, name))
    return sources


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._") or "image"


def _unique(name: str, taken: set[str]) -> str:
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name}-{count}"
    taken.add(candidate)
    return candidate
