"""What every benchmark that trains and evaluates writes into its records: the commands it ran (logged), the code's
commit, the machine, paths as a user would type them, per-image Dice for paired comparisons, and the hand-written
reading of a report kept when its tables are rebuilt. Used by benchmarks/peers/compare.py and the studies in
experiments/."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from leafseg.evaluation.compare import compare_values, read_per_image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
MARKER = "<!-- analysis: kept when the script rewrites this file -->"


def leafseg() -> str:
    exe = Path(sys.executable).with_name("leafseg")
    return str(exe) if exe.exists() else "leafseg"


def run_logged(cmd: list[str], log: Path) -> float:
    """Run a command with its output appended to ``log``; returns wall seconds; raises on failure."""
    started = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}), see {log}: {shlex.join(cmd)}")
    return time.time() - started


def commit() -> str:
    """The repository's commit, with "+changes" when tracked files differ from it (what a run trained with)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + ("" if git("diff", "--quiet", "HEAD").returncode == 0 else "+changes")


def machine() -> str:
    """OS, CPU (:func:`speed.cpu_description`: family, model and vector units), GPU, torch."""
    import torch

    from speed import cpu_description

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{platform.system()} {platform.release()}, {cpu_description()}, {os.cpu_count()} logical CPUs, "
            f"GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def relative(text: str) -> str:
    """Paths as a user in the repository would type them."""
    return text.replace(str(REPO.parent / "shared"), "../shared").replace(str(REPO) + "/", "")


def run_unrecorded(names: list[str], records: Path, run) -> None:
    """``run(name)`` for each of ``names`` without a record in ``records`` yet: a later invocation skips what is
    recorded, so an interrupted series goes on where it stopped."""
    for name in names:
        if (records / f"{name}.json").exists():
            print(f"{name}: recorded already")
            continue
        run(name)


def per_image_dice(csv_file: Path) -> dict[str, float | None]:
    """Each test image's Dice (kept in the record: two runs' differences can then be paired image by image); None
    where it is undefined (an empty cell or nan, as `leafseg score` and `leafseg evaluate` write it)."""
    return read_per_image(csv_file, digits=6)


def paired_bootstrap(a: dict, b: dict, n: int = 10000) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean per-image difference a - b over the images both scored (the same
    test images for both models, resampled together; fixed seed so the report is reproducible): `leafseg compare`'s."""
    c = compare_values(a, b, n_bootstrap=n)
    return c["ci_low"], c["ci_high"]


def manual_analysis(results: Path) -> str:
    """Keep the hand-written analysis (after the marker) when the tables are regenerated."""
    if results.exists() and MARKER in results.read_text():
        return results.read_text().split(MARKER, 1)[1].strip("\n")
    return "(to be written after looking at the numbers)"
