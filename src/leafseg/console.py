"""What leafseg says to its user goes through ``logging`` (the ``leafseg`` logger and its children, one per module);
this is the one console handler for it: messages on stdout, written above a running tqdm bar instead of through it.
The CLI installs it at start; the library installs it on first use too (a notebook calling ``leafseg.train`` sees
the same lines), and never twice. An application that wants leafseg's messages elsewhere removes it from
``logging.getLogger("leafseg")``."""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

ROOT = "leafseg"


class TqdmConsole(logging.Handler):
    """Messages on stdout, above a running tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


def configure_console() -> None:
    """The console handler on the ``leafseg`` logger at INFO (once); said once, whatever the application
    configured on the root logger."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, TqdmConsole) for h in root.handlers):
        root.addHandler(TqdmConsole())
        root.setLevel(logging.INFO)
        root.propagate = False
