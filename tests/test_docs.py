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


def test_readme_links_point_to_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert links and all((REPO / link).exists() for link in links), [x for x in links if not (REPO / x).exists()]


def test_the_project_speaks_of_itself_not_of_how_it_was_built():
    """README, docs, benchmark scripts and records, and the package: no sessions, lent machines or issue numbers as
    a reader's context (an API's identifiers, such as ONNX Runtime's sessions, are code, not wording)."""
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "src" / "leafseg").rglob("*.py"),
             *(f for f in (REPO / "benchmarks").rglob("*") if f.suffix in (".md", ".py", ".json", ".sh", ".yaml")
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
