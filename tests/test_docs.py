"""The README is what users read first and what CI proves: short, its links alive, its test command the one CI
runs, and it speaks of the project (commits, versions, dates), not of how it was built."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_ci_runs_its_test_command():
    assert len(README.splitlines()) <= 150
    assert "make test" in README and "make demo" in README
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_the_project_speaks_of_itself_not_of_how_it_was_built():
    """README, docs, benchmark scripts and records, and the package: no sessions, lent machines or issue numbers as
    a reader's context (an API's identifiers, such as ONNX Runtime's sessions, are code, not wording)."""
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "src" / "leafseg").rglob("*.py"),
             *(f for folder in ("benchmarks", "experiments") for f in (REPO / folder).rglob("*")
               if f.suffix in (".md", ".py", ".json", ".sh", ".yaml")
               and not any(part.startswith(".") for part in f.relative_to(REPO).parts))]  # e.g. nnU-Net's venv
    wording = re.compile(r"(?<![.\w])(?:sessions?|lent|issue \d+)(?![\w\[])", flags=re.IGNORECASE)
    api_keys = ('"session.intra_op.allow_spinning"',)  # ONNX Runtime's configuration keys are code

    def text(f: Path) -> str:
        t = f.read_text(encoding="utf-8")
        for key in api_keys:
            t = t.replace(key, "")
        return t

    found = {str(f.relative_to(REPO)): hits for f in files if (hits := wording.findall(text(f)))}
    assert not found, found


def test_the_product_speaks_of_the_product_not_of_the_lab_notebook():
    """README, docs/, the shipped configs and the package's docstrings describe what leafseg does: no experiment run
    ids (E8, X2S1r), no "still to run", goals, issues, or the layout's rooms and floors. The history behind a choice
    lives in experiments/, which the product's pages link to."""
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "src" / "leafseg").rglob("*.py"),
             *(REPO / "src" / "leafseg" / "configs").glob("*.yaml")]
    files = [f for f in files if f.name != "changelog.md"]  # a changelog is history by nature
    words = re.compile(r"\b(?:still to run|goals?|issues?|rooms|floors?)\b", flags=re.IGNORECASE)
    # experiment run ids: a capital letter and digits, maybe twice, maybe a lower-case tail (E8, P4s1, X2S1r)
    run_id = re.compile(r"(?<![\w.-])[A-Z]\d{1,3}(?:[A-Z]\d{1,3})?[a-z]*\b")
    not_run_ids = {"L1", "L2", "H100", "H200", "A100", "F401", "F811", "E402", "E501"}  # losses, GPUs, ruff codes

    found = {}
    for f in files:
        text = f.read_text(encoding="utf-8")
        hits = words.findall(text) + [h for h in run_id.findall(text) if h not in not_run_ids]
        if hits:
            found[str(f.relative_to(REPO))] = hits
    assert not found, found


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not (m := re.match(r"#{1,6} (.+)", line)):
            continue
        slug = _slug(m.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")  # repeated headings get -1, -2, ...
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_and_anchor_in_readme_docs_and_experiments_resolves():
    pages = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "experiments").rglob("*.md")]
    dead = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # code is not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:: not checked offline
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                dead.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                dead.append(f"{page.relative_to(REPO)}: {target} (no heading with that anchor)")
    assert not dead, "\n".join(dead)


def test_the_guide_names_every_packaged_recipe():
    guide = (REPO / "docs" / "guide.md").read_text(encoding="utf-8")
    recipes = sorted(f.stem for f in (REPO / "src" / "leafseg" / "configs").glob("*.yaml"))
    assert recipes and not [r for r in recipes if f"`{r}`" not in guide]
