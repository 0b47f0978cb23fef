"""The name of every file ``ecom2f predict`` writes under its output folder (local or s3://).

    <output>/
      panoptic.json          COCO panoptic predictions ({"annotations", "categories"}): ecom2f pq, panopticapi
      panoptic/<name>.png    their segment-id PNGs (id = R + 256 G + 256^2 B), the JSON's folder
      instances.json         COCO results: [{image_id, category_id, segmentation (RLE), score}] (pycocotools' loadRes)
      semantic/<name>.png    the class of every pixel (contiguous class ids, 8- or 16-bit grey)
      vis/<name>.jpg         with --vis: the image with its segments, class names and the chosen depth
      images.parquet         one row per input image: status, depth, GFLOPs, seconds, problem
      categories.json        contiguous class id -> dataset category (id, name, isthing)
      shards/part-NNNNN.json each shard's records, written after its images' files: what a rerun skips
      _SUCCESS.json          written last: counts and settings; the merged files above are complete

Only the shard records, the merged files and ``_SUCCESS.json`` say what is done; each file is
written whole (a temporary name then a rename, or one PUT), so none is ever seen half-written.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecom2f.storage.files import join

__all__ = ["PredictLayout"]


@dataclass(frozen=True)
class PredictLayout:
    root: str

    @property
    def panoptic_json(self) -> str:
        return join(self.root, "panoptic.json")

    @property
    def panoptic_folder(self) -> str:
        """``panoptic.json`` without ``.json``: where ``ecom2f pq`` looks for the PNGs by default."""
        return join(self.root, "panoptic")

    def panoptic_png(self, name: str) -> str:
        return join(self.panoptic_folder, f"{name}.png")

    @staticmethod
    def panoptic_file_name(name: str) -> str:
        """The PNG's name inside the panoptic folder, as the JSON's ``file_name`` gives it."""
        return f"{name}.png"

    @property
    def instances_json(self) -> str:
        return join(self.root, "instances.json")

    def semantic_png(self, name: str) -> str:
        return join(self.root, "semantic", f"{name}.png")

    def vis_jpg(self, name: str) -> str:
        return join(self.root, "vis", f"{name}.jpg")

    @property
    def table(self) -> str:
        return join(self.root, "images.parquet")

    @property
    def categories(self) -> str:
        return join(self.root, "categories.json")

    @property
    def shards(self) -> str:
        return join(self.root, "shards")

    def shard(self, index: int) -> str:
        return join(self.shards, f"part-{index:05d}.json")

    @property
    def success(self) -> str:
        return join(self.root, "_SUCCESS.json")
