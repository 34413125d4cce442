"""`cde-rag demo` for the browser tests, paced so that a browser can watch it work.

    python tests/demo_process.py demo --model ... [any `cde-rag demo` options]

Runs the real CLI (`cde_rag.cli.main`) in this process after two test-only injections, set by
environment variables of this script (the library has no test hooks):

* DEMO_TEST_STEP_DELAY=PHASES:SECONDS (e.g. "store:2"): every indexing progress step of
  those phases that `DemoIndex.index_files` and `refit` report (through their public
  `progress` callback) is followed by a pause, so indexing runs long enough for another
  session to ask a question meanwhile.
* DEMO_TEST_FIT_BATCHES=N,SECONDS: the model fits its context in N-text batches with a pause
  after each, so the tiny test checkpoint's fit has batches to watch (cde-small-v2 fits 512
  texts in 16 batches of 32).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The description of the model's progress bar over the minicorpus while it fits a context.
FIT_BAR = "Fitting context"


def pace_indexing(phases: set[str], delay: float) -> None:
    from cde_rag.demo.index import DemoIndex

    def paced(method):
        def run(self, *args, progress=None, **kwargs):
            def step(phase: str, done: int, total: int) -> None:
                progress(phase, done, total)
                if phase in phases:
                    time.sleep(delay)

            return method(self, *args, progress=None if progress is None else step, **kwargs)

        return run

    DemoIndex.index_files = paced(DemoIndex.index_files)
    DemoIndex.refit = paced(DemoIndex.refit)


def pace_fitting(batch_size: int, delay: float) -> None:
    """The one use of model internals here: `CDEModel._batches`, which yields the model's
    batches through a tqdm bar. Only the bar's description is looked at, never the method's
    arguments, so a change of its signature does not break this."""
    import cde_rag.model as model_module

    shared = model_module.shared_model
    batches = model_module.CDEModel._batches

    def small_batches(*args, **kwargs):
        model = shared(*args, **kwargs)
        model.batch_size = batch_size
        return model

    def paced_batches(self, *args, **kwargs):
        found = batches(self, *args, **kwargs)
        if getattr(found, "desc", None) != FIT_BAR:
            return found

        def paced():
            for batch in found:
                time.sleep(delay)
                yield batch

        return paced()

    model_module.shared_model = small_batches
    model_module.CDEModel._batches = paced_batches


def main() -> int:
    if os.environ.get("DEMO_TEST_STEP_DELAY"):
        phases, delay = os.environ["DEMO_TEST_STEP_DELAY"].split(":")
        pace_indexing(set(phases.split(",")), float(delay))
    if os.environ.get("DEMO_TEST_FIT_BATCHES"):
        size, delay = os.environ["DEMO_TEST_FIT_BATCHES"].split(",")
        pace_fitting(int(size), float(delay))
    from cde_rag.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
