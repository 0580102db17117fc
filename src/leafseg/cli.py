"""``leafseg`` command line: train, predict, evaluate, calibrate, score, compare, serve, split, demo, export,
convert-ldm.

Argument parsing only: each command calls one function of the package, imported when the command runs, so that
``leafseg --help`` starts without torch. ``leafseg train`` runs the same on one CPU, one GPU or several processes:
``accelerate launch --multi_gpu --num_processes 2 -m leafseg.cli train --config FILE`` (GPUs, or CPU processes
over gloo on a machine without CUDA).
"""

from __future__ import annotations

import argparse
import pickle
import signal
import sys
import threading

from . import __version__
from .console import configure_console
from .data.layouts import LAYOUTS  # numpy and PIL only: reading files does not need torch


def cmd_train(args) -> int:
    from .config import load_config
    from .training import train

    cfg = load_config(args.config, args.overrides)
    if args.output:
        cfg.run.output_dir = args.output
    result = train(cfg, resume=args.resume)
    best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f} (step {result.best_step})"
    print(f"trained {result.step} steps; best val Dice {best}; models in {result.run_dir}")
    return 0


def cmd_predict(args) -> int:
    from .prediction import predict

    report = predict(args.model, args.input, args.output, args.steps, args.ensemble, args.seed, args.batch_size,
                     args.device, args.uncertainty, args.threshold, args.save_probabilities, args.strict,
                     args.overwrite, args.backend, args.precision, args.tta, not args.no_frame_decision,
                     args.compile)
    print(f"wrote masks and overlays of {len(report.written)} image(s) to {args.output}")
    if report.left_out:
        print(f"left out {len(report.left_out)} entr{'y' if len(report.left_out) == 1 else 'ies'} of {args.input}:")
        for path, reason in report.left_out[:20]:
            print(f"  {path.name}: {reason}")
    if report.renamed:
        print(f"{len(report.renamed)} input(s) named apart in the outputs (stems that meet, or too long; every name "
              f"in {args.output}/names.csv):")
        for path, name in report.renamed[:20]:
            print(f"  {path} -> {name}_*")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file(s):", file=sys.stderr)
        for path, reason in report.skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _print_class_scores(result: dict) -> None:
    """A multi-class evaluation or score: each structure's Dice with its CI, then their mean."""
    summary = result["summary"]
    m = summary["metrics"]
    print(f"{summary['n_images']} images, {len(m['classes'])} structures (per-image metrics at each image's size; "
          f"{m['units']}):")
    for name, c in m["classes"].items():
        print(f"  {name}: Dice {c['dice']['mean']:.4f} [95% CI {c['dice']['ci_low']:.4f}, {c['dice']['ci_high']:.4f}]"
              f", IoU {c['iou']['mean']:.4f}, HD95 {c['hd95']['mean']:.2f} ({c['dice']['n_valid']} scored)")
    fg = m["mean_foreground"]["dice"]
    print(f"  mean over structures: Dice {fg['mean']:.4f} [95% CI {fg['ci_low']:.4f}, {fg['ci_high']:.4f}]")
    print(f"results in {result['output']} (report.md, per_image.csv, summary.json)")


def _print_scores(result: dict) -> None:
    """What evaluate and score print: the headline metrics with CIs, subgroups, frames without an object, files."""
    summary = result["summary"]
    m = summary["metrics"]
    if "classes" in m:  # several structures
        _print_class_scores(result)
        return
    print(f"{summary['n_images']} images: Dice {m['dice']['mean']:.4f} [95% CI {m['dice']['ci_low']:.4f}, "
          f"{m['dice']['ci_high']:.4f}], IoU {m['iou']['mean']:.4f}, HD95 {m['hd95']['mean']:.2f} "
          f"(per-image foreground means at each image's size; {m['units']})")
    pc = m.get("paper_compatible")
    if pc:
        print(f"paper-compatible (as the LEAF paper's Table 1: {'x'.join(map(str, pc['resolution']))} processing "
              f"resolution, both-empty = 0): Dice {pc['dice']:.4f}, mIoU {pc['miou_batch_mean']:.4f} (per-image "
              f"mean {pc['miou_image_mean']:.4f})")
        if pc["batch_order_warning"]:
            print(f"warning: {pc['batch_order_warning']}")
    if m.get("with_object", {}).get("n_images"):
        w = m["with_object"]
        print(f"images with an object: {w['n_images']}, Dice {w['dice']['mean']:.4f} [95% CI "
              f"{w['dice']['ci_low']:.4f}, {w['dice']['ci_high']:.4f}], IoU {w['iou']['mean']:.4f}")
    for label, g in (summary.get("groups") or {}).items():
        print(f"  group {label}: {g['n_images']} images, Dice {g['dice']['mean']:.4f} [95% CI "
              f"{g['dice']['ci_low']:.4f}, {g['dice']['ci_high']:.4f}]")
    unused = summary.get("groups_unused") or {}
    if unused.get("n"):
        print(f"  {unused['n']} name(s) of {summary['groups_file']} are not among the evaluated images and were not "
              f"used, e.g. {unused['examples'][:3]}")
    e = m["empty"]
    if e["gt_empty"]:
        print(f"frames without an object: {e['gt_empty']}, left empty {e['both_empty']}, given a mask "
              f"{e['gt_empty_pred_not']} (false-positive rate {e['false_positive_rate']:.1%})")
    fl = summary.get("frame_level")
    if fl and fl["n_with_object"] and fl["n_without_object"]:
        auc = ", ".join(f"{k} {v:.3f}" for k, v in fl["auroc"].items() if v is not None)
        print(f"frame level: sensitivity {fl['sensitivity']:.3f}, specificity {fl['specificity']:.3f} "
              f"({fl['cleared']} frame(s) cleared by the frame decision); AUROC of the frame scores: {auc}")
    elif fl and fl["cleared"]:
        print(f"frame decision: {fl['cleared']} frame(s) cleared")
    if "seed_stability" in summary:
        st = summary["seed_stability"]
        print(f"seed stability over {len(st['seeds'])} seeds: per-image Dice std mean {st['dice_std_mean']:.4f}, "
              f"pixel disagreement mean {st['disagreement_mean']:.4%}")
    figures = [f.split(":")[0] for k, f in summary["figures"].items() if f and k != "overlays"]
    files = ", ".join(["report.md", "per_image.csv", "summary.json", *figures,
                       *(["overlays/"] if summary["figures"].get("overlays") else [])])
    print(f"results in {result['output']} ({files})")


def cmd_score(args) -> int:
    from .evaluation.score import score

    result = score(args.pred, args.gt, args.output, args.images, tuple(args.spacing) if args.spacing else None,
                   args.groups, args.worst, args.missing_as_empty, args.overwrite, args.overlay_size, args.labels)
    _print_scores(result)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate

    result = evaluate(args.model, args.data, args.split, args.split_file, args.output, args.steps, args.ensemble,
                      args.seed, args.batch_size, args.device, layout=args.layout, seeds=args.seeds,
                      worst_k=args.worst, spacing=tuple(args.spacing) if args.spacing else None,
                      overwrite=args.overwrite, backend=args.backend,
                      allow_training_data=args.include_training_data, groups=args.groups,
                      precision=args.precision, overlay_size=args.overlay_size, flip_tta=args.tta,
                      threshold=args.threshold, frame_decision=not args.no_frame_decision, compile=args.compile)
    _print_scores(result)
    return 0


def cmd_calibrate(args) -> int:
    from .evaluation.calibrate import calibrate_model, calibration_text

    result = calibrate_model(args.model, args.positives, args.negatives, args.max_drop, args.dry_run)
    print(calibration_text(result))
    if result["decision"] is not None:
        print("not stored (--dry-run)" if args.dry_run else
              f"stored in {args.model}: predict, evaluate, serve and the Python API apply it (--no-frame-decision, "
              "or frame_decision=False, to segment every frame as it comes)")
    return 0


def cmd_compare(args) -> int:
    from .evaluation.compare import compare, compare_text
    from .files import write_json

    result = compare(args.a, args.b, args.metric, args.n_bootstrap, args.seed)
    print(compare_text(result))
    if args.output:
        write_json(result, args.output)
        print(f"wrote {args.output}")
    return 0


def cmd_serve(args) -> int:
    from .app import serve

    serve(args.model, args.host, args.port, args.device, args.precision, args.compile)
    return 0


def cmd_split(args) -> int:
    from .data import write_or_show_split

    print(write_or_show_split(args.data, args.layout, args.output, args.train, args.val, args.test, args.seed,
                              args.images, args.masks, args.force, args.groups, args.group_column))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, minutes=args.minutes)
    return 0


def cmd_export(args) -> int:
    from .pipelines import load_pipeline
    from .pipelines.onnx import export_onnx

    from .files import prepare_output

    pipe = load_pipeline(args.model, "cpu", "torch")
    # never into (or around) the model: its folder would become an ONNX folder
    prepare_output(args.output, args.overwrite, inputs=[args.model])
    out = export_onnx(pipe, args.output, args.opset, source=str(args.model))
    print(f"exported {args.model} to {out} (run it with --backend onnx, or leafseg.load_pipeline)")
    return 0


def cmd_convert_ldm(args) -> int:
    from .conversion import convert_ldm_checkpoints

    unet_overrides = {k: v for k, v in {"num_heads": args.num_heads, "num_head_channels": args.num_head_channels,
                                        "sample_size": args.sample_size}.items() if v is not None}
    if args.use_new_attention_order:
        unet_overrides["use_new_attention_order"] = True
    vae_overrides = {k: v for k, v in {"sample_size": args.vae_sample_size,
                                       "scaling_factor": args.scaling_factor}.items() if v is not None}
    if args.unet is None and args.vae is None:
        raise ValueError("give --unet and/or --vae")
    written = convert_ldm_checkpoints(args.unet, args.vae, args.out, use_ema=args.use_ema,
                                      unet_overrides=unet_overrides, vae_overrides=vae_overrides,
                                      overwrite=args.overwrite)
    for name, folder in written.items():
        print(f"wrote {name}: {folder}")
    return 0


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after an option's help (unless the help says it, or there is none); examples as written."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _command(sub, name: str, func, help: str, example: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=_Help)
    p.set_defaults(func=func)
    return p


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1, help="reverse steps (1 = LEAF single step; >1 = DDIM)")
    p.add_argument("--ensemble", type=int, default=1, help="seeds averaged into a probability map")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (ensemble member k uses seed + k)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability above which a pixel is foreground (choose it on val, never on test)")
    p.add_argument("--tta", action="store_true",
                   help="flip test-time augmentation: average over the image and its 3 flipped copies (4x the work)")
    p.add_argument("--no-frame-decision", action="store_true",
                   help="segment every frame as it comes, without the model's calibrated \"nothing here\" decision "
                        "(leafseg calibrate)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="auto: by the model folder (a saved model: PyTorch; a `leafseg export` folder: ONNX Runtime)")
    _add_device_args(p)


def _add_device_args(p: argparse.ArgumentParser) -> None:
    """Where and in what arithmetic a loaded model runs (predict, evaluate, serve)."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"],
                   help="UNet and mask decoder in bf16 (auto: where the CPU/GPU has bf16 units); the image encoder "
                        "stays fp32")
    p.add_argument("--compile", action="store_true",
                   help="compile the networks with torch.compile (needs a C++ compiler on the CPU): the first image "
                        "pays the compile (cached in ~/.cache/leafseg/inductor for later runs), the rest run faster")


def _add_train(sub) -> None:
    p = _command(sub, "train", cmd_train, "train LEAF (or the UNet baseline) from a YAML config",
                 "leafseg train --config cpu data.root=CVC-ClinicDB data.layout=cvc-clinicdb --output runs/cvc")
    p.add_argument("--config", default=None, help="YAML file or packaged config name (cpu, cpu-small, paper)")
    p.add_argument("--output", default=None, help="run folder (overrides run.output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, anywhere on the line")


def _add_predict(sub) -> None:
    p = _command(sub, "predict", cmd_predict, "segment an image or a folder of images",
                 "leafseg predict --model runs/cvc/model-best --input frames/ --output masks/ --ensemble 5 "
                 "--uncertainty")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--input", required=True, help="image file or folder")
    p.add_argument("--output", required=True, help="folder for masks and overlays")
    p.add_argument("--uncertainty", action="store_true", help="write uncertainty maps (needs --ensemble >= 2)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <name>_probability.npy (float32 soft mask at the image's size)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder first")
    _add_inference_args(p)


def _add_evaluate(sub) -> None:
    p = _command(sub, "evaluate", cmd_evaluate, "metrics on a split: per_image.csv, summary.json, figures",
                 "leafseg evaluate --model runs/cvc/model-best --data CVC-ClinicDB --split test")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--data", required=True, help="dataset folder (in the run's layout)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="which split")
    p.add_argument("--split-file", default=None,
                   help="default: the split the model's run trained with on this dataset (RUN/sources.json)")
    p.add_argument("--include-training-data", action="store_true",
                   help="allow --split all on a dataset the model trained on (scores its training images too)")
    p.add_argument("--output", default=None, help="default: eval-NAME-SPLIT beside the model folder NAME")
    p.add_argument("--layout", default=None, choices=sorted(LAYOUTS),
                   help="dataset layout (default: the training run's data.layout, else folder)")
    p.add_argument("--seeds", type=int, default=1, help="also run N-1 more seeds and report seed stability")
    p.add_argument("--worst", type=int, default=8, help="how many worst cases to list and draw")
    p.add_argument("--groups", default=None, metavar="CSV",
                   help="subgroups to report apart: rows 'name,group' (e.g. benign/malignant, or the centre)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("SY", "SX"), default=None,
                   help="pixel spacing (e.g. mm) for HD95/ASSD (default: pixels)")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder first")
    _add_overlay_size(p)
    _add_inference_args(p)


def _add_calibrate(sub) -> None:
    p = _command(sub, "calibrate", cmd_calibrate, "choose a model's frame-level \"nothing here\" decision on "
                 "validation evaluations and store it with the model",
                 "leafseg calibrate --model runs/polyp/model-best --positives runs/polyp/eval-val "
                 "--negatives runs/polyp/eval-negatives-val")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--positives", required=True, nargs="+",
                   help="evaluations (leafseg evaluate --no-frame-decision) of validation frames with an object")
    p.add_argument("--negatives", required=True, nargs="+",
                   help="evaluations of validation frames without an object")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="the most the mean Dice of frames with an object may drop (a cleared one scores 0)")
    p.add_argument("--dry-run", action="store_true", help="print the choice, store nothing")


def _add_overlay_size(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overlay-size", type=int, default=512,
                   help="longest side of each overlay panel in pixels (larger images are drawn smaller, which keeps "
                        "large frames fast; 0: full size); metrics are computed at full size either way")


def _add_score(sub) -> None:
    p = _command(sub, "score", cmd_score, "score a folder of predicted masks (any tool) against ground-truth masks",
                 "leafseg score --pred predictions/ --gt my-data/masks --images my-data/images --output scores/")
    p.add_argument("--pred", required=True, help="predicted masks: <name>.png / .nii.gz, or leafseg's <name>_mask.*")
    p.add_argument("--gt", required=True, help="ground-truth masks, named <name>.*")
    p.add_argument("--output", default=None, help="default: score-NAME beside the prediction folder NAME")
    p.add_argument("--images", default=None, help="the images, by the same names: overlays and figures")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("SY", "SX"), default=None,
                   help="pixel spacing (e.g. mm) for HD95/ASSD of 2D masks (volumes: their headers')")
    p.add_argument("--groups", default=None, metavar="CSV", help="subgroups to report apart: rows 'name,group'")
    p.add_argument("--worst", type=int, default=8, help="how many worst cases to list and draw")
    p.add_argument("--missing-as-empty", action="store_true",
                   help="score a ground truth without a prediction as an empty mask (default: an error)")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder leafseg wrote first")
    p.add_argument("--labels", default=None, metavar="JSON",
                   help="label table of multi-class masks (labels.json or nnU-Net dataset.json; default: one in the "
                   "ground-truth folder or above it): metrics per structure")
    _add_overlay_size(p)


def _add_compare(sub) -> None:
    p = _command(sub, "compare", cmd_compare, "two evaluations of the same images, image by image: the mean "
                 "difference A - B with a paired bootstrap CI, and on how many images each wins",
                 "leafseg compare runs/new/eval-model-best-test runs/old/eval-model-best-test")
    p.add_argument("a", help="evaluation A: a folder written by `leafseg evaluate` / `leafseg score`, or its "
                             "per_image.csv")
    p.add_argument("b", help="evaluation B, of the same images")
    p.add_argument("--metric", default="dice",
                   help="per-image metric to compare: dice, iou, precision, recall, specificity, hd95, assd; for "
                   "multi-class evaluations also dice_<structure>, iou_<structure>, hd95_<structure>")
    p.add_argument("--n-bootstrap", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (the same seed, the same CI)")
    p.add_argument("--output", default=None, help="also write the numbers to this JSON file")


def _add_serve(sub) -> None:
    p = _command(sub, "serve", cmd_serve, "a local web page to segment your own image with a saved model "
                 "(needs the app extra: pip install 'leafseg[app]')",
                 "leafseg serve --model runs/cvc/model-best --port 7860")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--port", type=int, default=7860, help="port of the page")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: reachable from other machines of your network)")
    _add_device_args(p)


def _add_split(sub) -> None:
    p = _command(sub, "split", cmd_split, "write (or show) a deterministic train/val/test split file for a dataset",
                 "leafseg split --data CVC-ClinicDB --layout cvc-clinicdb --train 0.6 --val 0.2 --test 0.2 "
                 "--output splits/cvc.json")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--layout", default="folder", choices=sorted(LAYOUTS), help="dataset layout")
    p.add_argument("--output", required=True, help="split JSON file to write")
    p.add_argument("--train", type=float, default=None, help="fraction (default: the layout's)")
    p.add_argument("--val", type=float, default=None, help="fraction (default: the layout's)")
    p.add_argument("--test", type=float, default=None, help="fraction (default: the layout's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle of the sorted stems")
    p.add_argument("--images", default="images", help="layout=folder: image sub-folder")
    p.add_argument("--masks", default="masks", help="layout=folder: mask sub-folder")
    p.add_argument("--force", action="store_true", help="replace an existing split file")
    p.add_argument("--groups", default=None, help="CSV with a header naming each image's group (e.g. its patient): "
                   "whole groups go to one split")
    p.add_argument("--group-column", default=None, help="the --groups column holding the group (default: the second)")


def _add_demo(sub) -> None:
    p = _command(sub, "demo", cmd_demo, "synthetic data -> fit autoencoder -> train LEAF -> evaluate (CPU, minutes)",
                 "leafseg demo --output leafseg-demo")
    p.add_argument("--output", default="leafseg-demo", help="demo folder")
    p.add_argument("--minutes", type=float, default=None, help="rough time budget for LEAF training")


def _add_export(sub) -> None:
    p = _command(sub, "export", cmd_export, "export a saved model's inference networks (no projector, no teacher) "
                 "to ONNX, for ONNX Runtime", "leafseg export --model runs/cvc/model-best --format onnx --output "
                 "runs/cvc/model-best-onnx")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument("--output", required=True, help="folder for the graphs and their manifest")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty output folder leafseg wrote first")


def _add_convert_ldm(sub) -> None:
    p = _command(sub, "convert-ldm", cmd_convert_ldm,
                 "CompVis LDM UNet / kl-f8 autoencoder checkpoints -> diffusers unet/ and vae/ folders "
                 "(.ckpt/.pt/.pth/.bin read with weights_only=True, or .safetensors)",
                 "leafseg convert-ldm --unet lsun_churches256/model.ckpt --vae kl-f8/model.ckpt --out pretrained/ldm")
    p.add_argument("--unet", default=None, help="LDM checkpoint with model.diffusion_model.* (UNet) weights")
    p.add_argument("--vae", default=None, help="LDM kl autoencoder checkpoint (or a LatentDiffusion one: "
                                               "first_stage_model.*)")
    p.add_argument("--out", required=True, help="output folder (gets unet/ and/or vae/)")
    p.add_argument("--use-ema", action="store_true", help="UNet: take the EMA weights (model_ema.*)")
    p.add_argument("--num-heads", type=int, default=None, help="UNet: LDM num_heads (default 8)")
    p.add_argument("--num-head-channels", type=int, default=None,
                   help="UNet: LDM num_head_channels (fixed head size; overrides --num-heads)")
    p.add_argument("--use-new-attention-order", action="store_true",
                   help="UNet: checkpoint used QKVAttention (use_new_attention_order=True) instead of the legacy one")
    p.add_argument("--sample-size", type=int, default=None, help="UNet latent size (default 32)")
    p.add_argument("--vae-sample-size", type=int, default=None, help="VAE image size (default 256)")
    p.add_argument("--scaling-factor", type=float, default=None,
                   help="VAE latent scaling factor (default: checkpoint scale_factor, else 0.18215)")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT/unet, OUT/vae")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"leafseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_predict, _add_evaluate, _add_calibrate, _add_score, _add_compare, _add_serve,
                _add_split, _add_demo, _add_export, _add_convert_ldm):
        add(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Like parse_args, but ``key=value`` overrides of ``train`` may stand anywhere, also after an option."""
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt("terminated")  # unwinds like Ctrl-C: temporary files go, finished files stay


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    configure_console()  # what the library logs (leafseg.*) appears on stdout, above progress bars
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, FloatingPointError, pickle.UnpicklingError) as err:
        # OSError: files (missing, exists, too long a name, no permission), whose message names the file
        print(f"leafseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, no traceback
        done = str(err) if str(err) and str(err) != "terminated" else ""
        print(f"leafseg {args.command}: interrupted{': ' + done if done else ''}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
