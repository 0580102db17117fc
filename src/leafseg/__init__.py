"""leafseg: LEAF latent-diffusion segmentation (single reverse step, encoder feature distillation).

Packages by stage: ``data`` (reading, layouts, splits), ``models`` (networks; imports nothing above it),
``pipelines`` (inference), ``training`` (engine + methods), ``evaluation`` (evaluate, score),
``conversion`` (CompVis LDM checkpoints -> diffusers). The names below load lazily, so ``import leafseg`` (and the
CLI's start-up) does not pay for torch and diffusers until they are used::

    from leafseg import LeafSegPipeline
    pipe = LeafSegPipeline.from_pretrained("runs/my-run/model-best")
    out = pipe(image)   # out.masks, out.probabilities, out.uncertainty
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# ``predict`` lives in ``leafseg.prediction``: a submodule named ``predict`` would shadow the function once imported
_LAZY = {
    "LeafSegPipeline": "leafseg.pipelines",
    "SupervisedSegPipeline": "leafseg.pipelines",
    "MonaiSegPipeline": "leafseg.pipelines",
    "SegmentationPipelineOutput": "leafseg.pipelines",
    "load_pipeline": "leafseg.pipelines",
    "load_config": "leafseg.config",
    "LeafSegConfig": "leafseg.config_schema",
    "train": "leafseg.training",
    "Trainer": "leafseg.training",
    "evaluate": "leafseg.evaluation",
    "predict": "leafseg.prediction",
    "segment_file": "leafseg.prediction",
    "score": "leafseg.evaluation.score",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'leafseg' has no attribute {name!r}")
