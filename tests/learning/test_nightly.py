"""The nightly job: gate, versioned registry (promote/rollback), crash recovery, and the app and
the nightly job writing the same database at once from two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.adapters import registry as adapters

from core.feedback import annotate
from core.learning.gate import GateResult, gate
from core.learning.nightly import NightlyConfig, plan, run_nightly
from core.learning.train import TrainConfig

# Each test trains or runs the nightly job on a tiny model: seconds to minutes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _seed(store, n: int = 40) -> list[dict]:
    """n synthetic reports, each with a shared AI draft (as `python -m core generate` stores)."""
    from core.ingest.demo import synthetic_reports

    store.import_reports(synthetic_reports(n, seed=5), file="synthetic", fmt="demo")
    reports = store.reports()
    store.add_generations({"report_id": r["id"], "model": "test-model",
                           "text": "No acute cardiopulmonary abnormality.", "latency_ms": 1.0}
                          for r in reports)
    return reports


def _rate(store, user, reports, style=lambda imp: f"1. {imp}"):
    for r in reports:
        case = store.case(r["id"])
        annotate.submit_rating(store, user, case, annotate.Rating(
            rating=-1, edited_text=style(r["impression"] or "No acute disease.")))


def _config(tiny, **kw) -> NightlyConfig:
    train = TrainConfig(epochs=1, batch_size=4, progress=False, learning_rate=5e-3,
                        max_length=512)
    base = dict(force=True, min_pairs=2, min_heldout_reports=1, refresh_per_reader=0,
                model_path=tiny, train=train, readers=["rad1"])
    base.update(kw)
    return NightlyConfig(**base)


# -- the gate ------------------------------------------------------------------------------------
def test_gate_refuses_a_worse_adapter():
    cfg = NightlyConfig()
    current = {"n": 10, "rougeL": 40.0, "label_f1": 0.8, "critical_recall": 1.0, "pref_acc": 0.6}
    better = {**current, "rougeL": 45.0, "pref_acc": 0.7}
    assert gate(better, current, cfg).promote
    worse = {**current, "rougeL": 38.0}
    decision = gate(worse, current, cfg)
    assert not decision.promote and "ROUGE-L gain -2.00" in decision.reason
    # a better style but a lost critical finding is refused
    unsafe = {**better, "critical_recall": 0.9}
    assert not gate(unsafe, current, cfg).promote
    assert "critical-finding recall" in gate(unsafe, current, cfg).reason
    # clinical labels worse beyond the tolerance, or preferences worse: refused
    assert not gate({**better, "label_f1": 0.7}, current, cfg).promote
    assert not gate({**better, "pref_acc": 0.5}, current, cfg).promote
    # too few held-out reports to judge: refused
    assert not gate({**better, "n": 2}, current, cfg).promote
    assert isinstance(gate(better, current, cfg), GateResult)


def test_nightly_gate_refuses_worse_candidate_end_to_end(store, users, tiny):
    """New training feedback that no longer matches the reader's held-out impressions makes a
    worse candidate: the job records it as rejected and the active version stays."""
    from core.learning.pairs import is_heldout

    reports = _seed(store, 30)
    rad = users["rad1"]
    _rate(store, rad, reports)
    first = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    assert first.status == "succeeded"
    adapters.promote(store, "rad1", first.version, actor="test")
    # the reader re-rates their training reports with nonsense; held-out ones keep their style
    for r in reports:
        if not is_heldout(rad.id, r["id"], 0.2):
            annotate.submit_rating(store, rad, store.case(r["id"]), annotate.Rating(
                rating=-1, edited_text="Zebra xylophone quartz."))
    second = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    assert second.status == "succeeded" and not second.promoted
    assert second.metrics["rougeL"] < second.baseline["rougeL"]
    assert adapters.active_adapter(store, "rad1").version == first.version
    row = store.get_adapter(rad.id, second.version)
    assert row["status"] == "rejected"
    run = store.get_run(second.run_id)
    assert run["decision"] == "rejected" and "ROUGE-L gain" in run["reason"]


# -- registry --------------------------------------------------------------------------------------
def _fake_version(store, reader, text="x"):
    version, tmp = adapters.allocate_version(store, reader)
    adapters.write_memory(tmp, [{"report_id": 1, "findings": "f", "impression": text}])
    return adapters.commit_version(store, reader, version, tmp, None, "memory", {"rougeL": 1.0})


def test_promote_and_rollback_are_atomic_and_mirrored_on_disk(store, users):
    v1 = _fake_version(store, "rad1")
    v2 = _fake_version(store, "rad1")
    assert (v1.version, v2.version) == (1, 2)
    assert adapters.active_adapter(store, "rad1") is None
    assert adapters.promote(store, "rad1", 1, actor="test") is None
    assert adapters.promote(store, "rad1", 2, user=users["admin"]) == 1
    assert adapters.read_pointer("rad1") == 2
    assert adapters.active_adapter(store, "rad1").version == 2
    assert adapters.rollback(store, "rad1", actor="test") == (2, 1)
    assert adapters.read_pointer("rad1") == 1
    assert adapters.rollback(store, "rad1", actor="test") == (1, None)  # back to shared
    assert adapters.read_pointer("rad1") is None and adapters.active_adapter(store, "rad1") is None
    with pytest.raises(adapters.AdapterRegistryError):
        adapters.rollback(store, "rad1", actor="test")
    events = [(e["action"], e["version"], e["previous_version"])
              for e in reversed(store.adapter_events(users["rad1"].id))]
    assert events == [("promote", 1, None), ("promote", 2, 1), ("rollback", 1, 2),
                      ("rollback", None, 1)]
    assert [a["action"] for a in store.audit_log(action="adapter_promote")]
    # radiologists may not promote
    from core.errors import PermissionDenied

    with pytest.raises(PermissionDenied):
        adapters.promote(store, "rad1", 1, user=users["rad1"])
    # a pointer file that disagrees with the database is repaired from it
    adapters.promote(store, "rad1", 2, actor="test")
    (adapters.reader_dir("rad1") / adapters.POINTER).write_text('{"version": 1}')
    assert adapters.sync_pointers(store) == 1 and adapters.read_pointer("rad1") == 2


def test_cli_adapters_list_promote_rollback(store, users, capsys):
    from core.cli.main import main

    _fake_version(store, "rad1")
    _fake_version(store, "rad1")
    db = store.path
    assert main(["--db", db, "adapters", "promote", "rad1", "2"]) == 0
    assert main(["--db", db, "adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "v2" in out and "ACTIVE" in out
    assert main(["--db", db, "adapters", "rollback", "rad1"]) == 0
    assert "to the shared model" in capsys.readouterr().out
    assert main(["--db", db, "adapters", "promote", "rad1", "9"]) == 2  # no such version: bad input


def test_cli_promote_of_a_version_the_gate_rejected_is_bad_input_without_the_override(
        store, users, capsys):
    """`--help` says 2 on bad input: a promotion that lacks the --override-gate it needs is
    refused with 2 and one line naming the flag; nothing changes until the flag is given."""
    from core.cli.main import main

    version, tmp = adapters.allocate_version(store, "rad1")
    adapters.write_memory(tmp, [])
    adapters.commit_version(store, "rad1", version, tmp, None, "memory", {}, status="rejected")
    db = store.path
    assert main(["--db", db, "adapters", "promote", "rad1", str(version)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rejected by the nightly gate" in err[0] \
        and "--override-gate" in err[0], err
    assert adapters.active_adapter(store, "rad1") is None
    assert main(["--db", db, "adapters", "promote", "rad1", str(version),
                 "--override-gate"]) == 0
    assert adapters.active_adapter(store, "rad1").version == version


def test_version_numbers_skip_orphan_folders(store, users):
    (adapters.reader_dir("rad1") / "v5").mkdir(parents=True)
    version, tmp = adapters.allocate_version(store, "rad1")
    assert version == 6 and tmp.name.startswith(".tmp-v6")
    assert adapters.cleanup_partial() == [tmp] and not tmp.exists()


# -- the nightly job -------------------------------------------------------------------------------
def test_nightly_trains_records_and_skips_without_new_feedback(store, users, tiny):
    reports = _seed(store, 30)
    rad = users["rad1"]
    _rate(store, rad, reports)
    report = run_nightly(store, _config(tiny), progress=False)
    o = report.outcomes[0]
    assert o.status == "succeeded", o.reason
    run = store.get_run(o.run_id)
    assert run["status"] == "succeeded" and run["method"] == "dpo"
    assert run["steps"] > 0 and run["losses"] and run["wall_s"] > 0
    assert run["n_train_pairs"] > 0 and run["pair_counts"]["kept"] > 0
    assert run["metrics"]["n"] >= 1 and "rougeL" in run["baseline_metrics"]
    assert run["adapter_version"] == o.version and Path(run["adapter_path"]).is_dir()
    path = Path(run["adapter_path"])
    assert {"adapter_config.json", "adapter_model.safetensors", "memory.jsonl",
            "manifest.json", "draft.json"} <= {p.name for p in path.iterdir()}
    # the memory bonus the version drafts with was chosen by leave-one-out on its memory
    chosen = adapters.read_draft_settings(path)
    assert chosen["memory_bonus"] == run["metrics"]["memory_bonus"]
    assert chosen["loo_n"] == len(adapters.read_memory(path)) and chosen["loo_rougeL"]
    assert run["decision"] == ("promoted" if o.promoted else "rejected")
    active = adapters.active_adapter(store, "rad1")
    assert (active is not None and active.version == o.version) == o.promoted
    # without new feedback the next night skips the reader
    again = run_nightly(store, _config(tiny, force=False, min_new_feedback=5), progress=False)
    assert again.outcomes[0].status == "skipped" and "0 new ratings" in again.outcomes[0].reason


def test_a_reader_the_gate_could_never_promote_is_not_trained(store, users, tiny):
    reports = _seed(store, 40)
    _rate(store, users["rad1"], reports[:25])  # ~5 held-out reports: the gate needs 10
    res = run_nightly(store, _config(tiny, method="dpo", min_heldout_reports=10), progress=False)
    (o,) = res.outcomes
    assert o.status == "skipped"
    assert "held-out reports (the gate needs 10)" in o.reason and "more rated reports" in o.reason
    assert store.training_runs(store.get_reader("rad1").id) == []  # no training run was spent


def test_plan_gives_the_runs_reasons_without_training_or_writing(store, users, tiny):
    reports = _seed(store, 40)
    rad = store.get_reader("rad1")
    _rate(store, users["rad1"], reports[:25])
    config = _config(tiny, method="dpo", min_heldout_reports=10, force=False, min_new_feedback=5)
    before = store.heldout_report_ids(rad.id)
    todo = plan(store, config)
    assert "held-out reports (the gate needs 10)" in todo["rad1"]
    assert store.heldout_report_ids(rad.id) == before and store.training_runs(rad.id) == []
    (o,) = [o for o in run_nightly(store, config, progress=False).outcomes if o.reader == "rad1"]
    assert o.status == "skipped" and o.reason == todo["rad1"]
    assert plan(store, _config(tiny, min_heldout_reports=2))["rad1"] == "trains"
    assert "the held-out fraction is 0" in plan(store, _config(tiny, heldout_fraction=0.0,
                                                           min_heldout_reports=100))["rad1"]
    assert plan(store, _config(tiny, force=False, min_new_feedback=100))["rad1"] == \
        "25 new ratings (< 100)"


def test_nightly_prefills_the_queue_with_the_readers_adapter(store, users, tiny):
    reports = _seed(store, 40)
    rad = users["rad1"]
    _rate(store, rad, reports[:25])
    o = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    adapters.promote(store, "rad1", o.version, actor="test")
    from core.generation.personal import refresh_drafts
    from core.generation.personal import load_drafter

    drafter = load_drafter(store, _config(tiny).draft, with_model=False)
    n = refresh_drafts(store, drafter, ["rad1"], per_reader=5)
    assert n == 5
    case = annotate.next_case(store, rad, adapter="rad1")
    assert case.adapter == "rad1"
    gen = store.get_generation(case.generation_id)
    assert gen["adapter_version"] == o.version


def _wait(predicate, timeout=120.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_kill_mid_run_leaves_adapters_and_db_intact_and_next_run_starts_clean(
        store, users, tiny, tmp_path):
    reports = _seed(store, 30)
    rad = users["rad1"]
    _rate(store, rad, reports)
    first = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    adapters.promote(store, "rad1", first.version, actor="test")
    active_files = {p.name: p.read_bytes() for p in
                    adapters.active_adapter(store, "rad1").path.iterdir()}
    n_feedback = store.count_feedback()
    # a long training run in another process
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "--db", store.path, "nightly", "--model", tiny,
         "--force", "--readers", "rad1", "--min-pairs", "1", "--min-heldout", "1", "--epochs", "200",
         "--quiet",
         "--refresh", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        started = _wait(lambda: any(r["status"] == "running" for r in store.training_runs())
                        and any(adapters.reader_dir("rad1").glob(".tmp-*/memory.jsonl")))
        assert started, proc.stdout.read().decode()[-2000:] if proc.poll() is not None else ""
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    running = [r for r in store.training_runs() if r["status"] == "running"]
    assert len(running) == 1
    # the database and the active adapter are as they were
    assert store.count_feedback() == n_feedback
    active = adapters.active_adapter(store, "rad1")
    assert active.version == first.version and adapters.read_pointer("rad1") == first.version
    assert {p.name: p.read_bytes() for p in active.path.iterdir()} == active_files
    assert list(adapters.reader_dir("rad1").glob(".tmp-*"))  # the half-written version
    # the next run marks the dead run abandoned, removes the leftovers, and works
    report = run_nightly(store, _config(tiny, method="memory"), progress=False)
    assert report.abandoned == [running[0]["id"]]
    assert store.get_run(running[0]["id"])["status"] == "abandoned"
    assert not list(adapters.reader_dir("rad1").glob(".tmp-*"))
    assert report.outcomes[0].status == "succeeded"


APP = textwrap.dedent("""
    import json, sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    from core.feedback import annotate
    from core.accounts.auth import User
    from core.store.database import Store

    db, user_id, stop = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    store = Store(db)
    user = User(user_id, "rad2", "radiologist", datetime.now(timezone.utc))
    ids = [r["id"] for r in store.reports()]
    done, errors, k = 0, [], 0
    while not stop.exists() and k < 2000:
        report_id = ids[k % len(ids)]
        k += 1
        try:
            case = store.case(report_id)
            annotate.submit_rating(store, user, case, annotate.Rating(
                rating=-1, edited_text=f"App edit {k}."), client_token=f"app-{k}")
            done += 1
        except Exception as exc:
            errors.append(repr(exc))
        time.sleep(0.02)
    print(json.dumps({"done": done, "errors": errors}))
""")


def test_app_and_nightly_at_once_lose_no_rating(store, users, tiny, tmp_path):
    import json

    reports = _seed(store, 40)
    _rate(store, users["rad1"], reports)
    stop = tmp_path / "stop"
    app = subprocess.Popen([sys.executable, "-c", APP, store.path, str(users["rad2"].id),
                            str(stop)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        rad2 = users["rad2"].id
        assert _wait(lambda: store.count_feedback(rad2) >= 5, timeout=60)
        before = store.count_feedback(rad2)
        report = run_nightly(store, _config(tiny), progress=False)
        during = store.count_feedback(rad2) - before
        stop.touch()
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["errors"] == []
    assert during > 0  # the app kept saving while the nightly job ran
    assert store.count_feedback(users["rad2"].id) == result["done"]
    assert report.outcomes[0].status == "succeeded", report.outcomes[0].reason


def test_nightly_under_a_two_rank_launcher_trains_ddp_and_only_rank0_writes(store, users, tiny,
                                                                          tmp_path):
    """`torchrun --nproc_per_node 2 -m core nightly` (what `accelerate launch --multi_gpu` runs
    on two GPUs), here as two CPU processes over gloo: both ranks train the same run, the
    batches are split between them (half the optimizer steps of one process), and only rank 0
    touches the database and the adapter folder."""
    import json
    import math

    from core.learning.pairs import pairs_for_reader

    reports = _seed(store, 30)
    _rate(store, users["rad1"], reports)
    n_train = len(pairs_for_reader(store, users["rad1"].id, 0.2).train)
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "core", "nightly",
           "--model", tiny, "--force", "--min-pairs", "2", "--min-heldout", "1",
           "--readers", "rad1", "--refresh", "0", "--epochs", "1", "--batch-size", "2",
           "--quiet", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(out.read_text())["outcomes"][0]
    assert outcome["status"] == "succeeded", outcome["reason"]
    runs = store.training_runs(reader_id=users["rad1"].id)
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"  # one run row: rank 0's
    # data parallel: 2 ranks x batch 2 per step -> half the steps one process would take
    assert runs[0]["steps"] == math.ceil(n_train / 4) < math.ceil(n_train / 2)
    version = adapters.get_version(store, "rad1", outcome["version"])
    assert (version.path / "adapter_model.safetensors").is_file()
    assert not (version.path / "trainer").exists()


# -- the Adapters page -----------------------------------------------------------------------------
def _page(user):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    config.set_option("client.showErrorDetails", "full")
    at = AppTest.from_file(str(ROOT / "pages" / "adapters.py"), default_timeout=60)
    at.session_state["user"] = user
    return at.run()


def test_adapters_page_lists_runs_and_promotes_and_rolls_back(store, users, tiny):
    reports = _seed(store, 30)
    _rate(store, users["rad1"], reports)
    o = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    v2 = _fake_version(store, "rad1")
    at = _page(users["coord"])
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Adapters"]
    frames = [df.value for df in at.dataframe]
    assert any("run" in f.columns and o.run_id in set(f["run"]) for f in frames)
    # promote v2 by hand, then roll back
    at.selectbox(key="ad_versions_reader").select("rad1").run()
    at.selectbox(key="ad_promote_version").select(v2.version).run()
    at.button(key="ad_promote").click().run()
    assert not at.exception, at.exception
    assert adapters.active_adapter(store, "rad1").version == v2.version
    at.selectbox(key="ad_rollback_reader").select("rad1").run()
    at.checkbox(key=f"ad_rollback_confirm_rad1_{v2.version}").check().run()   # confirm first
    at.button(key="ad_rollback").click().run()
    assert not at.exception, at.exception
    active = adapters.active_adapter(store, "rad1")
    expected = o.version if o.promoted else None
    assert (active.version if active else None) == expected


def test_adapters_page_is_closed_to_radiologists(store, users):
    at = _page(users["rad1"])
    assert any("do not have access" in e.value for e in at.error)
    assert not at.button


def test_nightly_predrafts_for_a_reader_promoted_on_an_earlier_night(store, users, tiny):
    reports = _seed(store, 40)
    _rate(store, users["rad1"], reports[:25])
    o = run_nightly(store, _config(tiny, method="memory"), progress=False).outcomes[0]
    adapters.promote(store, "rad1", o.version, actor="test")
    # tonight rad1 is not trained (no new feedback), yet their next cases are drafted by their adapter
    night = run_nightly(store, _config(tiny, method="memory", force=False, refresh_per_reader=3),
                        progress=False)
    assert [x.status for x in night.outcomes] == ["skipped"] and night.drafts_refreshed == 3
    case = annotate.next_case(store, users["rad1"])
    assert case.adapter == "rad1" and case.adapter_version == o.version
