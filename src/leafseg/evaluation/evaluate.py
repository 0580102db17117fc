"""``leafseg evaluate``: a saved model on one split of a dataset, metrics at each image's size, figures, hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .. import data as D
from ..figures import OVERLAY_SIZE, figure, read_own_png, save_overlay, save_png
from ..files import (atomic_dir, check_output, folder_digest, mark_output, same_folder, write_csv, write_json,
                     write_text)
from ..metrics import MultiClassMetrics, PaperMetrics, SegmentationMetrics, dice
from .read_ahead import read_ahead
from .report import report_markdown


def _run_config(model: Path) -> dict | None:
    path = model.parent / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    from ..config import read_yaml

    return OmegaConf.to_container(read_yaml(path, "run configuration"), resolve=False)


def training_sources(model: Path) -> list[dict]:
    """The datasets the model's run trained on (``RUN/sources.json``: absolute folder, layout, split file of each);
    empty for a model folder outside its run folder, or a run older than that file."""
    path = model.parent / "sources.json"
    if not path.is_file():
        return []
    try:
        sources = json.loads(path.read_text())
        return [s for s in sources if isinstance(s, dict) and {"root", "layout", "split_file"} <= set(s)]
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a leafseg sources file ({e})") from None


def _chosen_pairs(model: Path, data_root: str, split: str, split_file: str | None, layout: str,
                  images_dir: str, masks_dir: str, source: dict | None,
                  allow_training_data: bool) -> tuple[list, Path]:
    """The pairs of one split (``all``: every pair) and the split file they come from. Without ``split_file`` the
    split is the one the run trained with on this dataset (``source``); ``all`` on a dataset the model trained on
    is refused unless ``allow_training_data`` (it would score the images the model learnt)."""
    pairs = D.find_dataset(data_root, layout, images_dir, masks_dir)
    if split_file:
        split_path = Path(split_file)
    elif source is not None:
        split_path = Path(source["split_file"])
    else:
        split_path = model.parent / "split.json"
    if split == "all":
        if source is not None and not allow_training_data:
            raise ValueError(f"{data_root}: the model was trained on this dataset ({len(pairs)} images, split "
                             f"{split_path}): --split all would score its training images. Use --split test (or "
                             f"val), or pass --include-training-data to score every image anyway")
        return pairs, split_path
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path}: split file not found; {data_root} is not a dataset the model's run "
                                f"trained on (it would know its split): pass --split-file, or --split all")
    chosen = D.select(pairs, D.read_split(split_path, [p.stem for p in pairs])[split])
    if not chosen:
        raise ValueError(f"{split_path}: the {split!r} split is empty")
    return chosen, split_path


@dataclass
class _Sample:
    name: str
    image: np.ndarray           # (H, W, 3) uint8
    gt: np.ndarray              # (H, W) bool
    volume: str | None = None   # the volume a slice belongs to
    spacing: tuple[float, float] | None = None


def _samples(pairs: list, intensity: dict | None, axis: int, volumes: dict):
    """2D pairs as one sample each; a volume pair as its slices along ``axis`` (recorded in ``volumes`` so that
    the predictions can be stacked back), scaled to 8 bit as the model was trained."""
    for pair in pairs:
        if not D.is_volume(pair.image):
            image, gt = D.load_image(pair.image), D.load_pair_mask(pair)
            if gt.shape != image.shape[:2]:
                raise ValueError(f"{pair.mask}: mask is {gt.shape[1]}x{gt.shape[0]} but its image {pair.image} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            yield _Sample(pair.stem, image, gt), True
            continue
        images, masks, mask_volume = D.volume_pair_slices(pair, intensity, axis)
        volumes[pair.stem] = {"gt": masks, "pred": [], "axis": axis, "spacing": mask_volume.spacing}
        last = len(images) - 1
        for k, (image, gt) in enumerate(zip(images, masks)):
            yield _Sample(f"{pair.stem}/{k}", image, gt, pair.stem, mask_volume.slice_spacing(axis)), k == last


def _batches(samples, batch_size: int, bar):
    """Batches of samples; the progress bar counts finished cases (images or volumes)."""
    chunk = []
    for sample, case_done in samples:
        chunk.append(sample)
        bar.update(int(case_done))
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _volume_metrics(volumes: dict, names: dict[int, str] | None = None
                    ) -> SegmentationMetrics | MultiClassMetrics | None:
    """3D metrics of each volume (its slices stacked back), distances in the voxel spacing of its header (mm); per
    structure with ``names`` ({class index: name})."""
    if not volumes:
        return None
    acc = MultiClassMetrics(names) if names else SegmentationMetrics()
    for stem, v in volumes.items():
        acc.add(np.stack(v["pred"], axis=v["axis"]), np.stack(v["gt"], axis=v["axis"]), stem, v["spacing"])
    return acc


def _same_labels(model_labels, chosen: list, model: Path, data_root: str):
    """The label table a multi-class evaluation scores by: the model's, which must be the dataset's (the same names
    for the same values); None for a binary model on a binary dataset."""
    data_labels = chosen[0].labels if chosen else None
    if model_labels is None and data_labels is None:
        return None
    if model_labels is None or data_labels is None or model_labels.to_dict() != data_labels.to_dict():
        shown = {k: t.to_dict() if t is not None else "one structure" for k, t in
                 ((str(model), model_labels), (str(data_root), data_labels))}
        raise ValueError(f"the model and the dataset name different structures: {shown}; evaluate a model on data "
                         "labelled as it was trained (a labels.json / dataset.json in the data folder)")
    return model_labels


def model_digest(model: Path) -> str:
    """sha256 of a saved model's own files (model_index.json and the component folders it names): evaluation
    outputs written inside the model folder do not change it."""
    if (model / "leafseg_onnx.json").is_file():  # an ONNX export: its graphs and manifest
        return folder_digest(model, suffixes=(".onnx", ".json"))
    from ..models.weights import read_config  # here, not at the top: `score` and `compare` need no torch

    components = {k for k in read_config(model, "model_index.json") if not k.startswith("_")}
    return folder_digest(model, exclude=lambda rel: not (rel.parts[0] in components or str(rel) == "model_index.json"))


def _seed_stability(stem: str, gt: np.ndarray, runs: list, j: int) -> dict:
    seed_masks = np.stack([r.masks[j] for r in runs])
    seed_dice = [dice(m, gt) for m in seed_masks]
    return {"name": stem, "dice_std": float(np.std(seed_dice)), "dice_min": float(np.min(seed_dice)),
            "dice_max": float(np.max(seed_dice)),
            "disagreement": float(np.mean(seed_masks.any(0) & ~seed_masks.all(0)))}


def _stability_summary(stability: list[dict], seeds: list[int]) -> dict:
    stds = np.array([r["dice_std"] for r in stability])
    dis = np.array([r["disagreement"] for r in stability])
    return {
        "seeds": seeds, "dice_std_mean": float(stds.mean()), "dice_std_max": float(stds.max()),
        "disagreement_mean": float(dis.mean()), "disagreement_max": float(dis.max()),
        "definition": "dice_std: per-image std (ddof 0) of the Dice of each seed's mask; disagreement: per-image "
                      "fraction of pixels on which the seeds' masks are not unanimous",
    }


def read_group_table(path: str | Path) -> list[tuple[str, str]]:
    """A subgroup file's rows: CSV ``name,group`` (a header row ``name,group`` is allowed), e.g. benign / malignant
    or the centre of each image. Read and checked before any work: a missing file or a malformed row is an error
    naming the file and the row."""
    path = Path(path)
    try:
        lines = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: subgroup file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text CSV file ({e})") from None
    lines = [row for row in lines if row and any(cell.strip() for cell in row)]
    if lines and [c.strip().lower() for c in lines[0][:2]] == ["name", "group"]:
        lines = lines[1:]
    bad = [i for i, row in enumerate(lines) if len(row) != 2 or not row[1].strip()]
    if bad:
        raise ValueError(f"{path}: row {bad[0] + 1} is not 'name,group' ({lines[bad[0]]})")
    return [(name.strip(), label.strip()) for name, label in lines]


def assign_groups(table: list[tuple[str, str]], names: list[str], path: str | Path = "groups"
                  ) -> tuple[dict[str, set[str]], list[str]]:
    """The evaluated images ``names`` by group, and the table's names that are not among them (a table may cover a
    whole dataset and an evaluation one split of it: those rows are not used, and said so). Evaluated images the
    table does not list form the group ``(none)``. A table none of whose names is evaluated is an error (a wrong
    file, or names that are not the images' stems)."""
    known = set(names)
    unused = sorted({name for name, _ in table} - known)
    if table and len(unused) == len({name for name, _ in table}):
        raise ValueError(f"{path}: none of its {len(table)} names is an evaluated image, e.g. {unused[:3]} (names are "
                         f"the images' stems, volumes' slices as stem/k)")
    groups: dict[str, set[str]] = {}
    for name, label in table:
        if name in known:
            groups.setdefault(label, set()).add(name)
    unlabelled = known - set().union(*groups.values()) if groups else known
    if unlabelled:
        groups["(none)"] = unlabelled
    return groups, unused


def read_groups(path: str | Path, names: list[str]) -> dict[str, set[str]]:
    """:func:`read_group_table` then :func:`assign_groups` (the groups only)."""
    return assign_groups(read_group_table(path), names, path)[0]


def group_summary(metrics, table: list[tuple[str, str]], names: list[str], path: str | Path) -> dict:
    """The summary's ``groups`` (metrics per group) and ``groups_unused`` (table rows naming other images)."""
    groups, unused = assign_groups(table, names, path)
    return {"groups_file": str(Path(path).resolve()),
            "groups": {label: metrics.subset(members).summary() for label, members in sorted(groups.items())},
            "groups_unused": {"n": len(unused), "examples": unused[:5]}}


def figure_cases(rows: list[dict], k: int = 8, worst_k: int = 8) -> dict[str, list[dict]]:
    """Which images each figure shows, never chosen by name:

    - ``grid``: ``k`` images with an object at evenly spaced quantiles of Dice, lowest to highest (the spread of the
      results, not the first files, which may all be one kind);
    - ``worst``: the ``worst_k`` lowest Dice among images with an object, ties (e.g. many misses at 0) broken by the
      larger object first, then by a hash of the name, so that no group of names crowds out the others;
    - ``false_positives``: frames without an object that were given a mask, the largest predicted area first.
    """
    def tie(r: dict) -> str:
        return hashlib.sha256(r["name"].encode()).hexdigest()

    with_object = [r for r in rows if not r["gt_empty"]]
    by_dice = sorted(with_object, key=lambda r: (r["dice"], -r["gt_pixels"], tie(r)))
    picks = sorted(set(np.linspace(0, len(by_dice) - 1, min(k, len(by_dice))).round().astype(int))) if by_dice else []
    false_pos = sorted((r for r in rows if r["gt_empty"] and not r["pred_empty"]),
                       key=lambda r: (-r["pred_pixels"], tie(r)))
    return {"grid": [by_dice[i] for i in picks], "worst": by_dice[:worst_k], "false_positives": false_pos[:worst_k]}


def _write_figures(out: Path, rows: list[dict], worst_k: int, with_uncertainty: bool) -> dict[str, list[dict]]:
    """grid.png, worst_cases.png and (when frames without an object got a mask) false_positives.png from the
    overlays (see :func:`figure_cases`); returns the cases of each figure that has an overlay."""
    def overlay_of(r: dict) -> Path:
        return out / "overlays" / f"{r['name'].replace('/', '_')}.png"

    cases = {name: [r for r in chosen if overlay_of(r).exists()]  # a volume's empty slices have no overlay
             for name, chosen in figure_cases(rows, worst_k=worst_k).items()}
    for name, file in (("grid", "grid.png"), ("worst", "worst_cases.png"), ("false_positives", "false_positives.png")):
        if cases[name]:
            save_png(figure([read_own_png(overlay_of(r)) for r in cases[name]], with_uncertainty), out / file)
    return cases


def _predict_and_score(pipe, chosen: list, out: Path, metrics: SegmentationMetrics, paper: PaperMetrics, split: str,
                       steps: int, ensemble: int, seed: int, seeds: int, batch_size: int, spacing,
                       overlay_size: int | None, flip_tta: bool = False, threshold: float = 0.5,
                       frame_decision: bool = True, frames: list | None = None) -> tuple:
    """Segment every sample of ``chosen`` (2D images, volumes' slices), score it, write its overlay; returns the
    seed-stability rows and the volumes' slices (for 3D metrics). ``frames`` collects each sample's frame-level
    scores and whether the frame decision cleared it."""
    from tqdm.auto import tqdm

    stability, volumes = [], {}
    frames = [] if frames is None else frames
    samples = _samples(chosen, pipe.config.get("intensity"), int(pipe.config.get("slice_axis", 2)), volumes)
    bar = tqdm(total=len(chosen), desc=f"evaluating {split}", unit="case")

    names = pipe.label_table.foreground if pipe.label_table is not None else None

    def score(chunk: list, runs: list) -> None:
        result = runs[0]
        for j, (c, pred) in enumerate(zip(chunk, result.masks)):
            metrics.update(pred, c.gt, name=c.name, spacing=c.spacing or spacing)
            if names is None:  # the paper's numbers are binary
                paper.update(result.processing_masks[j], D.resize_mask(c.gt, pipe.resolution))
            if result.frame_scores is not None:
                frames.append({"name": c.name, "has_object": bool(c.gt.any()), "given_mask": bool(pred.any()),
                               **result.frame_scores[j], "cleared": bool(result.cleared[j])})
            if c.volume is not None:
                volumes[c.volume]["pred"].append(pred)
            unc = result.uncertainty[j] if result.uncertainty is not None else None
            if seeds > 1:
                stability.append(_seed_stability(c.name, c.gt, runs, j))
                if unc is None:  # std over seeds of the soft mask (label maps: of each class, averaged)
                    unc = np.stack([r.probabilities[j] for r in runs]).std(0)
                    unc = unc.mean(0) if unc.ndim == 3 else unc
            if c.volume is not None and not (pred.any() or c.gt.any()):
                continue  # a volume's empty slices get no figure
            save_overlay(out / "overlays" / f"{c.name.replace('/', '_')}.png", c.name, c.image, c.gt, pred, unc,
                         overlay_size, names)

    # Reading the next batch and scoring the last one (PNG decoding and encoding, surface distances) run on two
    # threads beside the inference: one reader, one scorer, so rows keep their order and the numbers are the
    # serial ones (tests compare them). PIL, zlib and torch release the GIL while they work.
    batches = _batches(read_ahead(samples) if OVERLAP else samples, batch_size, bar)
    with ThreadPoolExecutor(max_workers=1) as scorer:
        pending: Future | None = None
        for chunk in batches:
            images = [c.image for c in chunk]
            # seed + 1000 k: ensemble members (seed .. seed+E-1) never overlap
            runs = [pipe(images, num_inference_steps=steps, ensemble_size=ensemble, seed=seed + 1000 * k,
                         flip_tta=flip_tta, threshold=threshold, frame_decision=frame_decision) for k in range(seeds)]
            if pending is not None:
                pending.result()  # at most one batch waits to be scored: memory stays bounded, errors surface
                pending = None
            if OVERLAP:
                pending = scorer.submit(score, chunk, runs)
            else:
                score(chunk, runs)
        if pending is not None:
            pending.result()
    bar.close()
    return stability, volumes


OVERLAP = True  # read ahead and score behind the inference on threads (False: one thread, for comparison)


def frame_level(frames: list[dict]) -> dict | None:
    """Frames as a detector would be judged: a frame is called positive when its mask is not empty. Sensitivity:
    frames with an object given a mask; specificity: frames without one left empty (None where a set has no such
    frame); the AUROC of each frame score for "has an object" (None unless both kinds are there)."""
    from ..pipelines.frame_decision import FRAME_SCORES, roc_auc  # beside torch, loaded with the model

    if not frames:
        return None
    has = np.array([f["has_object"] for f in frames])
    called = np.array([f["given_mask"] for f in frames])
    out = {"n_with_object": int(has.sum()), "n_without_object": int((~has).sum()),
           "sensitivity": float(called[has].mean()) if has.any() else None,
           "specificity": float((~called[~has]).mean()) if (~has).any() else None,
           "cleared": int(sum(f["cleared"] for f in frames)),
           "auroc": {k: roc_auc(np.array([f[k] for f in frames]), has) for k in FRAME_SCORES}}
    return out


def default_output(model_dir: str | Path, split: str) -> Path:
    """Where ``leafseg evaluate`` writes without ``--output``: ``eval-<model folder name>-SPLIT`` beside the model."""
    model = Path(model_dir).resolve()
    return model.parent / f"eval-{model.name}-{split}"


def evaluate(model_dir: str, data_root: str, split: str, split_file: str | None, output: str | None,
             steps: int = 1, ensemble: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
             layout: str | None = None, images_dir: str = "images", masks_dir: str = "masks", seeds: int = 1,
             worst_k: int = 8, spacing: tuple[float, float] | None = None, overwrite: bool = False,
             backend: str = "auto", allow_training_data: bool = False, groups: str | None = None,
             precision: str = "fp32", overlay_size: int | None = OVERLAY_SIZE, flip_tta: bool = False,
             threshold: float = 0.5, frame_decision: bool = True, compile: bool = False) -> dict:
    """Metrics on one split at each image's original size, into ``output``, which must be empty or absent
    (``overwrite``: emptied first). The default, ``eval-<model folder name>-SPLIT`` beside the model folder, is
    outside it: a run that goes on training replaces its model-best folder whole, and would take the results along.

    Writes ``per_image.csv``, ``summary.json`` (metrics, config, split-file and checkpoint hashes, seeds),
    ``overlays/<stem>.png`` (image | ground truth | prediction | uncertainty), ``grid.png`` (images at Dice quantiles),
    ``worst_cases.png`` + the summary's ``worst_cases`` (the ``worst_k`` lowest Dice). With ``seeds > 1`` the
    pipeline also runs with seeds ``seed + 1000 k`` (k = 1 .. seeds-1); the reported metrics stay those of ``seed``
    and the summary gains ``seed_stability`` (per-image Dice std across seeds, pixel disagreement rate).

    Run inside its run folder, the model knows the datasets it trained on (``RUN/sources.json``): on one of them,
    the split file and layout default to the run's, and ``split="all"`` is refused unless ``allow_training_data``.
    ``groups``: a CSV of ``name,group`` (:func:`read_groups`); the summary and report gain a row per group.

    Args:
        model_dir: a saved or exported model folder. data_root: the dataset folder.
        split: ``train``, ``val``, ``test`` or ``all``. split_file: default the run's (see above).
        output: the results folder (default beside the model folder).
        steps, ensemble, seed, batch_size, device, backend, precision: as for :func:`leafseg.predict`.
        layout, images_dir, masks_dir: how the dataset is laid out (default the run's layout).
        seeds: >= 2 adds the seed-stability study. worst_k: worst cases listed and drawn.
        spacing: pixel spacing of 2D images for HD95/ASSD (volumes use their headers').
        overwrite: empty a non-empty output folder first.
        allow_training_data: allow ``split="all"`` on a dataset the model trained on.
        groups: a ``name,group`` CSV of subgroups.
        overlay_size: the longest side of each overlay panel (larger images are drawn smaller; None or 0: full
            size); metrics are computed at full size either way.
        flip_tta: average over each image's flipped copies (``LeafSegPipeline.__call__``).
        threshold: probability above which a pixel is foreground (choose it on val, never on test).
        frame_decision: apply the model's calibrated "nothing here" decision, if it has one (``leafseg calibrate``);
            either way ``frame_scores.csv`` holds each frame's scores and the summary's ``frame_level`` the
            frame-level sensitivity, specificity and AUROC of each score.

    Returns:
        ``{"summary": dict, "output": Path}``: the summary written to ``summary.json`` (metrics with 95% CIs, the
        paper-compatible numbers, empty-frame counts, hashes, versions) and the results folder.

    Raises:
        ValueError, FileNotFoundError: a wrong split, dataset, model or output folder (the message names it).
    """
    from ..pipelines import load_pipeline  # torch and diffusers load here, when a model is evaluated
    from ..pipelines.frame_decision import stored_decision
    from ..pipelines.image_processor import check_threshold

    if seeds < 1 or worst_k < 0:
        raise ValueError("seeds must be >= 1 and worst_k >= 0")
    check_threshold(threshold)
    model = Path(model_dir)
    run_config = _run_config(model)
    source = next((s for s in training_sources(model) if same_folder(s["root"], data_root)), None)
    if layout is None:
        layout = source["layout"] if source else ((run_config or {}).get("data") or {}).get("layout", "folder")
    if source is not None and (images_dir, masks_dir) == ("images", "masks"):
        images_dir, masks_dir = source.get("images", "images"), source.get("masks", "masks")
    chosen, split_path = _chosen_pairs(model, data_root, split, split_file, layout, images_dir, masks_dir, source,
                                       allow_training_data)
    table = read_group_table(groups) if groups is not None else None  # checked before any work
    pipe = load_pipeline(model_dir, device, backend, precision, compile)
    labels = _same_labels(getattr(pipe, "label_table", None), chosen, model, data_root)
    metrics = MultiClassMetrics(labels.foreground, spacing) if labels else SegmentationMetrics(spacing=spacing)
    paper = PaperMetrics()
    decision = stored_decision(pipe, frame_decision)  # the summary records what was applied
    final = check_output(Path(output) if output else default_output(model, split), overwrite,
                         inputs=[data_root, model])
    # written beside the old results and swapped in when complete: a failed or interrupted evaluation leaves the
    # previous one as it was (with --overwrite it was emptied first and lost)
    with atomic_dir(final) as out:
        mark_output(out)
        (out / "overlays").mkdir()
        started = time.time()
        frames: list[dict] = []
        stability, volumes = _predict_and_score(pipe, chosen, out, metrics, paper, split, steps, ensemble, seed,
                                                seeds, batch_size, spacing, overlay_size, flip_tta, threshold,
                                                frame_decision, frames)
        volume_rows = _volume_metrics(volumes, labels.foreground if labels else None)
        rows = metrics.rows()
        write_csv(rows, out / "per_image.csv")
        if frames:
            write_csv(frames, out / "frame_scores.csv")
        cases = _write_figures(out, rows, worst_k, ensemble > 1 or seeds > 1)
        worst = cases["worst"]
        summary = {
            "model": str(model.resolve()), "checkpoint_sha256": model_digest(model),
            "data": str(Path(data_root).resolve()), "layout": layout, "split": split,
            "split_file": None if split == "all" else str(split_path.resolve()),
            "split_file_sha256": None if split == "all" else D.split_digest(split_path),
            "n_images": len(rows),
            "inference": {"steps": steps, "ensemble": ensemble, "seed": seed, "seeds": seeds,
                          "flip_tta": flip_tta, "threshold": threshold,
                          "frame_decision": decision.to_config() if decision else None,
                          "pipeline": type(pipe).__name__, "device": str(pipe.device), "precision": pipe.precision},
            "versions": _versions(), "leafseg": __version__,
            "wall_s": round(time.time() - started, 1),
            "labels": labels.to_dict() if labels else None,
            "metrics": {**metrics.summary(), "paper_compatible": None if labels else paper.result()},
            "frame_level": frame_level(frames),
            "worst_cases": [{"name": r["name"], "dice": r["dice"], "iou": r["iou"]} for r in worst],
            "false_positive_cases": [{"name": r["name"], "predicted_fraction": r["pred_pixels"] / max(
                r["tp"] + r["fp"] + r["fn"] + r["tn"], 1)} for r in cases["false_positives"]] if not labels else
            [{"name": r["name"], "predicted_pixels": r["pred_pixels"]} for r in cases["false_positives"]],
            "config": run_config,
            "figures": {"overlays": "overlays/<stem>.png: image | ground truth | prediction | uncertainty",
                        "grid": "grid.png: images with an object at evenly spaced quantiles of Dice, lowest first"
                        if cases["grid"] else None,
                        "worst_cases": "worst_cases.png: lowest Dice among images with an object (ties: larger "
                                       "object first)" if worst else None,
                        "false_positives": "false_positives.png: frames without an object given a mask, largest "
                                           "first" if cases["false_positives"] else None},
        }
        if table is not None:
            summary.update(group_summary(metrics, table, [r["name"] for r in rows], groups))
        if volume_rows is not None:
            summary["volumes"] = volume_rows.summary()
            write_csv(volume_rows.rows(), out / "per_volume.csv")
        if seeds > 1:
            summary["seed_stability"] = _stability_summary(stability, [seed + 1000 * k for k in range(seeds)])
            write_csv(stability, out / "seed_stability.csv")
        write_json(summary, out / "summary.json")
        write_text(report_markdown(summary), out / "report.md")
    return {"summary": summary, "output": final}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "diffusers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
