"""The model card (``README.md``) written into every saved model folder, as diffusers / Hub models carry one:
what the model is, how it was trained (config, data, split hash, the command), how it scored on val, and the
licences of the pretrained parts it contains or was trained with. Written through huggingface_hub's ``ModelCard``,
so that the card opens with the YAML metadata the Hub and its tools read (licence, library, tags, datasets, the val
score as model-index)."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from omegaconf import DictConfig

from .. import __version__
from ..models.autoencoder import autoencoder_folder
from .budget import budget_note

LICENCES = {
    "taef2": "TAEF2 autoencoder (Ollin Boer Bohan, MIT)",
    "diffusers": "the diffusers autoencoder folder given as autoencoder.path (its publisher's licence; the paper's "
                 "CompVis kl-f8 comes from the CompVis latent-diffusion model zoo)",
    "kl": "an autoencoder initialised or fitted by leafseg (no third-party weights)",
    "lite_medsam": "LiteMedSAM TinyViT teacher (bowang-lab MedSAM, Apache-2.0; training only, not in the model)",
    "dinov2": "DINOv2 teacher (Meta AI, Apache-2.0; training only, not in the model)",
}


#: what a model trained by a method other than LEAF is, for its card
PEER_DESCRIPTIONS = {
    "supervised_unet": "A supervised UNet (diffusers UNet2DModel at timestep 0; soft Dice + BCE)",
    "dynunet": "MONAI DynUNet in nnU-Net v2's 2D topology (Dice + CE, deep supervision)",
    "basicunet": "MONAI BasicUNet (Dice + CE)",
}


def _autoencoder_source(ac: DictConfig) -> str:
    try:
        folder = autoencoder_folder(ac.kind, ac.path)
    except ValueError:
        return "folder not set"
    return "built by leafseg" if folder is None else f"`{folder}`"


def card_metadata(cfg: DictConfig, state: dict) -> ModelCardData:
    """The card's YAML header. The weights inherit the terms of their training data and pretrained parts (listed
    in the card), hence licence ``other``; the val Dice is the model-index result (never a test score)."""
    method = str(cfg.method)  # a plain string for the YAML writer
    datasets = [Path(str(root)).name for root in [cfg.data.root, *(s.root for s in cfg.data.sources)] if root]
    best = state.get("best_val_dice")
    results = None
    if best is not None and datasets:
        results = [EvalResult(task_type="image-segmentation", dataset_type=datasets[0], dataset_name=datasets[0],
                              dataset_split="val", metric_type="dice", metric_name="per-image foreground Dice",
                              metric_value=round(float(best), 4))]
    return ModelCardData(
        license="other", license_name="training-data-and-parts",
        library_name="leafseg", pipeline_tag="image-segmentation",
        tags=["image-segmentation", "medical-imaging", "leafseg",
              *(["latent-diffusion", "leaf"] if method == "leaf" else [method])],
        datasets=datasets or None, metrics=["dice"], model_name=f"leafseg-{method}", eval_results=results)


def model_card(cfg: DictConfig, state: dict, split_sha256: str | None, kind: str) -> str:
    """The card (YAML metadata, then Markdown) of a model exported at ``state['step']`` (``kind``: "best" or
    "last")."""
    d, tc = cfg.data, cfg.train
    method = cfg.method
    best = state.get("best_val_dice")
    budget = budget_note(tc, state)
    lines = [
        f"# leafseg model ({'LEAF' if method == 'leaf' else method + ' baseline'}, {kind})", "",
        "Load it with `leafseg.load_pipeline(folder)`"
        + (" or `leafseg.LeafSegPipeline.from_pretrained(folder)`" if method == "leaf" else "")
        + "; segment with `leafseg predict --model FOLDER --input IMAGES --output OUT`, or try it in the browser "
        "with `leafseg serve --model FOLDER`.", "",
        "## What it is", "",
    ]
    if method == "leaf":
        lines += [f"- LEAF (MICCAI 2025) latent-diffusion segmentation, single reverse step; target "
                  f"`{cfg.diffusion.prediction_type}`, feature alignment {'on' if cfg.align.enabled else 'off'}"
                  f"{f' (teacher {cfg.align.teacher})' if cfg.align.enabled else ''}.",
                  f"- Mask autoencoder: {cfg.autoencoder.kind} ({_autoencoder_source(cfg.autoencoder)}), processing "
                  f"resolution "
                  f"{d.resolution}x{d.resolution}; the image is resized to it and the mask back to the image size."]
    else:
        lines += [f"- {PEER_DESCRIPTIONS.get(method, method)} at {d.resolution}x{d.resolution}."]
    lines += ["", "## How it was trained", "",
              f"- Data: `{d.root}` (layout `{d.layout}`), split file sha256 `{split_sha256}`"
              + "".join(f"; with `{s.root}` (layout `{s.get('layout') or 'folder'}`)" for s in d.sources)
              + ".",
              f"- {state.get('step')} of {state.get('budget_steps') or tc.max_steps} steps{budget}, batch "
              f"{tc.batch_size}, lr {tc.lr} "
              f"({tc.lr_schedule}, {tc.warmup_steps} warm-up steps), EMA {'on' if tc.ema.enabled else 'off'}, seed "
              f"{cfg.run.seed}; the full configuration is `config.yaml` in the run folder.",
              f"- Command: `{shlex.join(sys.argv)}`.",
              f"- leafseg {__version__}, written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
              "", "## Scores", "",
              f"- Best val Dice (per-image foreground, processing resolution, single step): "
              f"{'n/a' if best is None else f'{best:.4f}'} at step {state.get('best_step')} (selection on val only).",
              "- Test metrics: run `leafseg evaluate`; its `report.md` holds them with confidence intervals.",
              "", "## Licences of the pretrained parts", ""]
    parts = [cfg.autoencoder.kind] + ([cfg.align.teacher] if method == "leaf" and cfg.align.enabled else [])
    lines += [f"- {LICENCES.get(p, p)}" for p in parts]
    if cfg.unet.pretrained:
        lines.append(f"- UNet initialised from `{cfg.unet.pretrained}` (the paper's: CompVis LDM LSUN-Churches-256)")
    lines += ["- The weights inherit the terms of the data they were trained on (the datasets above)."]
    header = card_metadata(cfg, state).to_yaml()
    return str(ModelCard(f"---\n{header}\n---\n\n" + "\n".join(lines) + "\n"))
