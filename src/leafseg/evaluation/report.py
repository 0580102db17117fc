"""``report.md``: an evaluation's summary as Markdown a paper or a lab notebook can take as it is."""

from __future__ import annotations


def _num(x, pct: bool = False, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.{digits}g}" if abs(x) >= 10 else f"{x:.{digits}f}"


def _header(summary: dict) -> list[str]:
    """Title and provenance: of a model evaluated on a split (``leafseg evaluate``), or of a folder of predicted
    masks scored against ground truth (``leafseg score``)."""
    if summary.get("kind") == "score":
        return [f"# Scores: {summary['n_images']} cases", "",
                f"Predictions `{summary['pred']}` against ground truth `{summary['gt']}` (matched by name; "
                f"{summary['n_extra_predictions']} prediction(s) without ground truth left out); leafseg "
                f"{summary['leafseg']}.", ""]
    inf = summary["inference"]
    threshold = inf.get("threshold", 0.5)
    threshold_note = "" if threshold == 0.5 else f"threshold {threshold}, "
    return [f"# Evaluation: {summary['split']} split, {summary['n_images']} images", "",
            f"Model `{summary['model']}` (sha256 `{summary['checkpoint_sha256'][:16]}`), data `{summary['data']}` "
            f"(layout `{summary['layout']}`), split file sha256 `{(summary['split_file_sha256'] or 'n/a')[:16]}`; "
            f"{inf['pipeline']}, {inf['steps']} step(s), ensemble {inf['ensemble']}, seed {inf['seed']}, "
            f"{'flip test-time augmentation, ' if inf.get('flip_tta') else ''}"
            f"{threshold_note}"
            f"on {inf['device']} ({inf.get('precision', 'fp32')}); leafseg {summary['leafseg']}.", ""]


def _per_class_markdown(summary: dict) -> str:
    """The report of a multi-class evaluation: Dice, IoU and HD95 per structure and their foreground mean."""
    m = summary["metrics"]
    rows = []
    for name, c in m["classes"].items():
        cells = []
        for key in ("dice", "iou", "hd95"):
            s = c[key]
            cells.append(f"{_num(s['mean'])} [{_num(s['ci_low'])}, {_num(s['ci_high'])}]")
        rows.append(f"| {name} | {' | '.join(cells)} | {c['dice']['n_valid']} |")
    fg = m["mean_foreground"]
    rows.append("| **mean over structures** | " + " | ".join(
        f"**{_num(fg[k]['mean'])}** [{_num(fg[k]['ci_low'])}, {_num(fg[k]['ci_high'])}]"
        for k in ("dice", "iou", "hd95")) + " | |")
    worst = ", ".join(f"{w['name']} ({w['dice']:.3f})" for w in summary["worst_cases"])
    lines = [*_header(summary),
             "Per-image metrics of each structure at each image's original size, then their mean over structures "
             f"(the mean of the structures' means); 95% CI: percentile bootstrap over images. {m['empty_rule']}.",
             "", f"| structure | Dice [95% CI] | IoU | HD95 ({m['units']}) | n scored |", "|---|---|---|---|---|",
             *rows, "", f"Lowest mean Dice: {worst or 'n/a'}.", ""]
    for key, alt in (("grid", "images at quantiles of mean Dice, lowest first"), ("worst_cases", "lowest mean Dice")):
        if summary["figures"].get(key):
            lines += [f"![{alt}]({summary['figures'][key].split(':')[0]})", ""]
    lines.append("Panels: image | ground truth | prediction, a colour per structure (legend below each row); every "
                 "image's panel is in `overlays/`, every number in `per_image.csv`.")
    return "\n".join(lines) + "\n"


def report_markdown(summary: dict) -> str:
    m, inf = summary["metrics"], summary.get("inference") or {}
    if "classes" in m:
        return _per_class_markdown(summary)
    rows = []
    for key, label in (("dice", "Dice"), ("iou", "IoU"), ("precision", "precision"), ("recall", "recall"),
                       ("specificity", "specificity"), ("hd95", f"HD95 ({m['units']})"),
                       ("assd", f"ASSD ({m['units']})")):
        s = m[key]
        ci = f"[{_num(s.get('ci_low'))}, {_num(s.get('ci_high'))}]" if "ci_low" in s else ""
        rows.append(f"| {label} | {_num(s['mean'])} | {ci} | {_num(s['median'])} | {_num(s['std'])} | "
                    f"{s['n_valid']} | {s['n_nan']} |")
    if m.get("with_object", {}).get("n_images"):  # some ground truths empty: the images with an object alone
        w = m["with_object"]
        for key, label in (("dice", "Dice, images with an object"), ("iou", "IoU, images with an object")):
            rows.append(f"| {label} | {_num(w[key]['mean'])} | [{_num(w[key]['ci_low'])}, {_num(w[key]['ci_high'])}] "
                        f"| | | {w['n_images']} | |")
    e = m["empty"]
    worst = ", ".join(f"{w['name']} ({w['dice']:.3f})" for w in summary["worst_cases"])
    lines = [
        *_header(summary),
        "Per-image foreground metrics at each image's original size; 95% CI: percentile bootstrap over images.", "",
        "| metric | mean | 95% CI | median | std | n | n undefined |", "|---|---|---|---|---|---|---|", *rows, "",
    ]
    pc = m.get("paper_compatible")
    if pc:
        res = "x".join(map(str, pc["resolution"] or []))
        lines += [
            f"**Paper-compatible** (to put beside the LEAF paper's Table 1; per-image foreground Dice / IoU at the "
            f"{res} processing resolution, both-empty images scored 0): Dice {_num(pc['dice'])}, mIoU "
            f"{_num(pc['miou_batch_mean'])} (mean over batches of {pc['batch_size']}; per-image mean "
            f"{_num(pc.get('miou_image_mean'))})."
            + (f" **Warning:** {pc['batch_order_warning']}." if pc.get("batch_order_warning") else ""), ""]
    lines += [
        f"Empty masks: {e['gt_empty']} empty ground truths, {e['pred_empty']} empty predictions, {e['both_empty']} "
        f"both (scored {e['empty_score']:g} here). Pooled (dataset-level) Dice {_num(m['pooled']['dice'])}.", "",
        f"Lowest Dice: {worst or 'n/a'}.", "",
    ]
    if e["gt_empty"]:
        lines[-2:-2] = [
            f"**Frames without an object**: {e['gt_empty']}; left empty {e['both_empty']}, given a mask "
            f"{e['gt_empty_pred_not']}: false-positive rate {100 * e['false_positive_rate']:.1f}%"
            + (f" (median predicted area {100 * e['false_positive_area_median']:.1f}% of the frame)"
               if e["gt_empty_pred_not"] else "") + ".", ""]
    if summary.get("groups"):
        lines += [f"Subgroups (`{summary['groups_file']}`):", "",
                  "| group | n | Dice [95% CI] | IoU | with an object: n, Dice | empty frames given a mask |",
                  "|---|---|---|---|---|---|"]
        for label, g in summary["groups"].items():
            w, ge = g.get("with_object"), g["empty"]
            lines.append(f"| {label} | {g['n_images']} | {_num(g['dice']['mean'])} [{_num(g['dice']['ci_low'])}, "
                         f"{_num(g['dice']['ci_high'])}] | {_num(g['iou']['mean'])} | "
                         + (f"{w['n_images']}, {_num(w['dice']['mean'])}" if w else "all") + " | "
                         + (f"{ge['gt_empty_pred_not']} of {ge['gt_empty']}" if ge["gt_empty"] else "none") + " |")
        lines.append("")
    if "seed_stability" in summary:
        st = summary["seed_stability"]
        lines += [f"Seed stability over seeds {st['seeds']}: per-image Dice std mean {_num(st['dice_std_mean'])} "
                  f"(max {_num(st['dice_std_max'])}); pixels on which the seeds disagree: mean "
                  f"{100 * st['disagreement_mean']:.2f}%.", ""]
    figures = summary["figures"]
    for key, alt in (("grid", "images at quantiles of Dice, lowest first"), ("worst_cases", "lowest Dice"),
                     ("false_positives", "frames without an object given a mask")):
        if figures.get(key):
            lines += [f"![{alt}]({figures[key].split(':')[0]})", ""]
    if figures.get("overlays"):
        lines.append("Panels: image | ground truth (green) | prediction (orange)"
                     + (" | uncertainty (std over seeds/ensemble, 0-0.5)"
                        if inf.get("ensemble", 1) > 1 or inf.get("seeds", 1) > 1 else "")
                     + "; every image's panel is in `overlays/`, every number in `per_image.csv`.")
    else:
        lines.append("Every number is in `per_image.csv`.")
    return "\n".join(lines) + "\n"
