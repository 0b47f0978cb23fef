"""The categories a run's contiguous class ids stand for: dataset ids (what COCO files hold), names
(overlays, the service's answers) and thing/stuff.

Found, in order: an explicit COCO category file (``--categories``: a JSON list, or a document with
a ``categories`` list), the COCO JSON given as input, the JSON of the run's ``data.val`` dataset
(when it is a COCO file that exists), the class names a converted checkpoint carried
(``<run>/parent/classes.json``), else generic ``class_<i>`` with ids ``i`` and the model's
things (``model.thing_ids``). Contiguous id ``i`` is the ``i``-th category by dataset id (the rule of
:class:`ecom2f.data.metadata.DatasetMetadata`).
"""

from __future__ import annotations

import json
import logging

from ecom2f import storage
from ecom2f.config import Config
from ecom2f.config.data import dataset_spec
from ecom2f.errors import BadInputError, MissingFileError

log = logging.getLogger(__name__)

__all__ = ["generic_categories", "resolve_categories"]


def resolve_categories(config: Config, categories_file: str | None = None,
                       input_categories: list[dict] | None = None) -> list[dict]:
    """``[{"id", "name", "isthing"}]`` with one entry per contiguous class id of ``config.model``.

    Raises BadInputError when the list found does not have ``model.num_classes`` entries.
    """
    found, origin = None, ""
    if categories_file is not None:
        found, origin = _read_categories(categories_file), categories_file
    elif input_categories:
        found, origin = input_categories, "the input COCO JSON"
    else:
        found, origin = _validation_categories(config)
    if found is None:
        found, origin = _parent_classes(config)
    if found is None:
        return generic_categories(config.model.num_classes, config.model.thing_ids)
    categories = sorted(({"id": int(c["id"]), "name": str(c.get("name", c["id"])),
                          "isthing": int(bool(c.get("isthing", 1)))} for c in found), key=lambda c: c["id"])
    if len(categories) != config.model.num_classes:
        raise BadInputError(
            f"{origin} has {len(categories)} categories but the model predicts {config.model.num_classes} classes "
            "(model.num_classes); give the category file of the dataset the run was trained on (--categories)"
        )
    return categories


def _parent_classes(config: Config) -> tuple[list[dict] | None, str]:
    """The class names a converted checkpoint carried (``<run>/parent/classes.json``), ids ``0..K-1``."""
    path = config.storage.layout().parent_classes
    if not storage.exists(path):
        return None, ""
    tree = json.loads(storage.read_text(path))
    things = set(tree.get("thing_ids") or config.model.thing_ids)
    return [{"id": i, "name": name, "isthing": int(i in things)} for i, name in enumerate(tree["names"])], path


def generic_categories(num_classes: int, thing_ids) -> list[dict]:
    things = set(thing_ids)
    return [{"id": i, "name": f"class_{i}", "isthing": int(i in things)} for i in range(num_classes)]


def _read_categories(uri: str) -> list[dict]:
    if not storage.exists(uri):
        raise MissingFileError(f"category file {uri} does not exist")
    try:
        document = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as error:
        raise BadInputError(f"category file {uri} is not valid JSON ({error})") from None
    entries = document.get("categories") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not all(isinstance(c, dict) and "id" in c for c in entries):
        raise BadInputError(f"{uri} holds no COCO category list ([{{'id', 'name', 'isthing'}}, ...])")
    return entries


def _validation_categories(config: Config) -> tuple[list[dict] | None, str]:
    """The category list of the run's ``data.val`` COCO JSON, when it names one that exists."""
    from ecom2f.data.registry import resolve_spec

    try:
        spec = resolve_spec(dataset_spec(config.data.val), root=config.data.root)
    except (KeyError, ValueError):
        return None, ""
    uri = spec.get("json")
    if not uri or not storage.exists(uri):
        return None, ""
    try:
        entries = json.loads(storage.read_text(uri)).get("categories")
    except (json.JSONDecodeError, AttributeError):
        return None, ""
    log.info("categories from the run's validation set %s", uri)
    return (entries, uri) if isinstance(entries, list) else (None, "")
