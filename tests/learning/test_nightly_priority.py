"""Issue 16.5: the nightly job yields the CPU to the app (a nice value and a thread budget).

Run in a child process: lowering the priority cannot be undone, and the test process must not
be slowed for the tests after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

NIGHTLY = textwrap.dedent("""
    import json, os, sys
    from core.learning.nightly import NightlyConfig, run_nightly
    from core.store.database import Store

    store = Store(sys.argv[1])
    seen = {}
    import core.learning.nightly as nightly
    real = nightly._run_nightly

    def spy(*args, **kwargs):  # what the job runs with, while it runs
        import torch

        seen.update(nice=os.nice(0), torch_threads=torch.get_num_threads(),
                    omp=os.environ.get("OMP_NUM_THREADS"))
        return real(*args, **kwargs)

    nightly._run_nightly = spy
    kwargs = json.loads(sys.argv[2])
    run_nightly(store, NightlyConfig(readers=["nobody"], **kwargs), progress=False)
    store.close()
    print(json.dumps(seen), flush=True)
""")


def _run(db: str, env: dict | None = None, **config) -> dict:
    proc = subprocess.run([sys.executable, "-c", NIGHTLY, db, json.dumps(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_nightly_job_runs_at_low_priority_with_a_thread_budget(store):
    store.close()
    seen = _run(store.path)
    assert seen["nice"] >= 10
    cores = len(os.sched_getaffinity(0))
    assert seen["torch_threads"] == max(1, cores - 1) and seen["omp"] == str(max(1, cores - 1))
    # both are configurable, in the config or the environment
    seen = _run(store.path, nice=15, threads=1)
    assert (seen["nice"], seen["torch_threads"]) == (15, 1)
    seen = _run(store.path, env={"IMPRESSIONIST_NIGHTLY_NICE": "12",
                                 "IMPRESSIONIST_NIGHTLY_THREADS": "1"})
    assert (seen["nice"], seen["torch_threads"]) == (12, 1)


def test_bad_priority_settings_are_refused():
    from core.errors import ImpressionistError
    from core.learning.nightly import NightlyConfig

    with pytest.raises(ImpressionistError, match="nice"):
        NightlyConfig(nice=25)
    with pytest.raises(ImpressionistError, match="threads"):
        NightlyConfig(threads=0)
