"""The server process: uvicorn serving the app, with Python's garbage collector set for a process that lives long."""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI

# A full collection at most every this many collections of the middle generation (Python's default: 10). Each one
# scans every object the runs in flight hold, some 150 a run: with 2,000 runs in flight a scan took 0.2-0.4 s, in
# which the server answered nothing (serve_bench). Runs make few reference cycles, so the heap grows little between.
FULL_EVERY = 200
# The middle generation collected every this many young collections (default 10): half the objects a scan, which
# took up to 40 ms under that load (POST /runs p99 38-47 ms with 5, 50-100 ms with 10).
MIDDLE_EVERY = 5


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` on host:port until SIGTERM or Ctrl-C."""
    settle_heap()
    # A client following a run's events keeps its connection open: past 5 s the server closes it, so that a stop
    # still ends the runs in flight interrupted instead of waiting for them to finish.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


def settle_heap() -> None:
    """Keep what is loaded before serving (modules, flows, the model's bindings; a full collection took 70 ms over
    them) out of the collector's scans for good, and make collections of the older generations rarer or smaller."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gc.get_threshold()[0], MIDDLE_EVERY, FULL_EVERY)
