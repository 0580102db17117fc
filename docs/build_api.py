"""Build the API reference (docs/api/) from the public API's docstrings with pdoc:

    .venv/bin/python docs/build_api.py [OUTPUT_FOLDER]        # default docs/api

The names of ``leafseg.__all__`` load lazily (``import leafseg`` stays free of torch); they are resolved here first so
that pdoc documents them on one page. ``tests/test_api_docs.py`` rebuilds the page and fails when the committed one
differs, so it cannot fall behind the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pdoc
import pdoc.render

import leafseg

DOCS = Path(__file__).resolve().parent


def build(output: Path) -> list[Path]:
    for name in leafseg.__all__:  # the lazy names into the module's namespace, where pdoc looks
        setattr(leafseg, name, getattr(leafseg, name))
    pdoc.render.configure(docformat="google", show_source=False, search=False, template_directory=DOCS / "api-template",
                          footer_text=f"leafseg {leafseg.__version__}")
    pdoc.pdoc("leafseg", "!leafseg\\..*", output_directory=output)
    return sorted(output.rglob("*.html"))


if __name__ == "__main__":
    written = build(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS / "api")
    print("wrote", ", ".join(str(p) for p in written))
