"""What a training run says, said once: the ``leafseg.training`` logger prints each message above the progress bar
and, while a run is open, appends it with a timestamp to ``RUN/logs/train.log`` (the command, versions, every
decision and validation, and why a run stopped): the file to attach to a bug report, as nnU-Net's training log is.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..console import configure_console

logger = logging.getLogger(__package__)  # leafseg.training: every training module says through it
LOG_FILE = "train.log"


def say(message: str) -> None:
    """One line for the user (and the run's log file, when one is open)."""
    configure_console()
    logger.info(message)


@contextmanager
def run_log(run_dir: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Append what the run says to ``run_dir/logs/train.log`` while inside (on the main process: ``enabled``); a
    resumed run appends to the same file. An exception that stops the run is written there too, then re-raised."""
    if not enabled:
        yield None
        return
    from .. import __version__

    path = Path(run_dir) / "logs" / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} leafseg {__version__}, python "
                         f"{sys.version.split()[0]}: {shlex.join(sys.argv)}\n")
    configure_console()
    logger.addHandler(handler)
    try:
        yield path
    except BaseException as err:
        handler.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} stopped: {type(err).__name__}: {err}\n")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
