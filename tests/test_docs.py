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


def test_user_pages_speak_of_the_project_not_of_how_it_was_built():
    pages = [REPO / "README.md", *(REPO / "docs" / name for name in ("guide.md", "pretrained.md", "speed.md",
                                                                       "development.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        found = re.findall(r"\b(?:sessions?|lent|issue \d+)\b", text, flags=re.IGNORECASE)
        assert not found, f"{page.name}: {found}"
