"""Samples read on a background thread ahead of their use (``leafseg evaluate`` decodes the next frames while the
model segments the current ones)."""

from __future__ import annotations

import queue
import threading

_DONE = object()


def read_ahead(samples, depth: int = 16):
    """``samples`` read on a background thread, up to ``depth`` ahead; an error while reading is raised here."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in samples:
                while not stop.is_set():
                    try:
                        ahead.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            ahead.put(err)

    reader = threading.Thread(target=read, name="leafseg-evaluate-reader", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
