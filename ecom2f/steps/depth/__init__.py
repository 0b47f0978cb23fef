"""Step 2: the parent at every exit on every training image -> the depth table (parquet).

| file | what |
|---|---|
| ``job.py`` | ``build_depth_dataset(config)``: shards on Ray Data, resumable, verified |
| ``stages.py`` | the pipeline's stages: load images (CPU), the network at every exit (GPU), score (CPU) |
| ``table.py`` | the table's schema, shards, manifest; its one writer and its one reader (``read_depth_table`` -> ``DepthTable``) |
| ``labels.py`` | ideal exits and label histograms for a beta, from the table (the trade-off: ``ecom2f.tradeoff``) |
"""

from ecom2f.steps.depth.job import build_depth_dataset

__all__ = ["build_depth_dataset"]
