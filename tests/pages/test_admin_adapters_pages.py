"""Admin and Adapters pages (issue 14.12): the users table shows the latest action, generation
shows progress (no server path) and leaves no zombie, a gate-rejected version needs an explicit
override, rollback asks for confirmation, the speed chart uses whole run numbers and leaves out
memory-only runs."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from core import util
from core.accounts import admin
from core.adapters import registry as adapters
from core.errors import GateRejected

TIMEOUT = 60
ROOT = Path(__file__).resolve().parents[2]


def _version(store, reader, status="candidate"):
    version, tmp = adapters.allocate_version(store, reader)
    adapters.write_memory(tmp, [{"report_id": 1, "findings": "f", "impression": "x"}])
    return adapters.commit_version(store, reader, version, tmp, None, "memory", {"rougeL": 1.0},
                                   status=status)


def test_users_table_shows_the_action_just_taken(store, users, open_page):
    at = open_page("admin.py", users["admin"])
    at.selectbox(key="admin_access_user").select("rad2")
    next(b for b in at.button if b.label == "Disable").click().run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "username" in d.value.columns)
    assert not table.set_index("username").loc["rad2", "active"]     # this run, not the next


def test_generation_progress_without_paths_and_the_child_is_reaped(store, users, cases,
                                                                    monkeypatch, open_page):
    import subprocess

    real = subprocess.Popen

    def quick(cmd, **kw):  # a child that exits at once instead of loading a model
        return real([sys.executable, "-c", "pass"], **kw)

    monkeypatch.setattr(admin.subprocess, "Popen", quick)
    run = admin.start_generation(store, users["admin"], limit=5)
    deadline = time.time() + 20
    while run.returncode is None and time.time() < deadline:
        time.sleep(0.05)
    assert run.returncode == 0                        # reaped by its thread: no <defunct>
    with pytest.raises(ChildProcessError):
        os.waitpid(run.pid, os.WNOHANG)
    shown = admin.generation_progress(store, users["admin"])[0]
    assert not shown.running and "finished" in shown.text and "/" not in shown.text
    at = open_page("admin.py", users["admin"])
    assert not at.exception, at.exception
    bars = at.get("progress")
    assert bars and all("log" not in b.proto.text and "/" not in b.proto.text for b in bars)


def test_a_gate_rejected_version_needs_an_explicit_override(store, users, open_page):
    _version(store, "rad1")
    rejected = _version(store, "rad1", status="rejected")
    with pytest.raises(GateRejected, match="rejected by the nightly gate"):
        adapters.promote(store, "rad1", rejected.version, user=users["coord"])
    at = open_page("adapters.py", users["coord"])
    at.selectbox(key="ad_versions_reader").select("rad1").run()
    at.selectbox(key="ad_promote_version").select(rejected.version).run()
    assert any("rejected" in w.value for w in at.warning)
    assert at.button(key="ad_promote").disabled
    at.checkbox(key=f"ad_override_rad1_{rejected.version}").check().run()
    at.button(key="ad_promote").click().run()
    assert not at.exception, at.exception
    assert adapters.active_adapter(store, "rad1").version == rejected.version
    event = store.adapter_events(users["rad1"].id)[0]
    assert "overriding the gate" in event["reason"]


def test_rollback_asks_for_confirmation(store, users, open_page):
    _version(store, "rad1")
    _version(store, "rad1")
    adapters.promote(store, "rad1", 1, actor="test")
    adapters.promote(store, "rad1", 2, actor="test")
    at = open_page("adapters.py", users["coord"])
    at.selectbox(key="ad_rollback_reader").select("rad1").run()
    assert at.button(key="ad_rollback").disabled
    box = at.checkbox(key="ad_rollback_confirm_rad1_2")
    assert "from v2 to v1" in box.label
    box.check().run()
    at.button(key="ad_rollback").click().run()
    assert not at.exception, at.exception
    assert adapters.active_adapter(store, "rad1").version == 1


def test_speed_chart_has_whole_run_numbers_and_no_memory_only_runs(store, users, open_page):
    rid = users["rad1"].id
    for method, speed in (("memory", None), ("dpo", 12.5), ("dpo", 14.0)):
        run = store.start_run(rid, method)
        store.update_run(run, status="succeeded", decision="rejected", pairs_per_s=speed,
                         metrics={"rougeL": 0.4}, finished_at=util.now())
    at = open_page("adapters.py", users["coord"])
    assert not at.exception, at.exception
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    speed = next(s for s in specs if "Training speed" in s["layout"]["title"]["text"])
    xs = [x for trace in speed["data"] for x in trace["x"]]
    assert sorted(xs) == ["run 2", "run 3"]          # the memory-only run 1 is left out
    assert speed["layout"]["xaxis"]["type"] == "category"
    runs = adapters.runs_table(store, users["coord"])
    assert str(runs["run"].dtype) == "Int64" and str(runs["version"].dtype) == "Int64"


def test_cli_promotes_a_rejected_version_only_with_override_gate(store, users, capsys):
    from core.cli.main import main

    _version(store, "rad1", status="rejected")
    assert main(["--db", store.path, "adapters", "promote", "rad1", "1"]) == 2
    assert "rejected by the nightly gate" in capsys.readouterr().err
    assert adapters.active_adapter(store, "rad1") is None
    assert main(["--db", store.path, "adapters", "promote", "rad1", "1", "--override-gate"]) == 0
    assert adapters.active_adapter(store, "rad1").version == 1
    events = len(store.adapter_events())
    capsys.readouterr()
    assert main(["--db", store.path, "adapters", "promote", "rad1", "1", "--override-gate"]) == 0
    assert "already active" in capsys.readouterr().out
    assert len(store.adapter_events()) == events  # a promotion that changes nothing is not logged


def test_active_versions_say_why_the_next_nightly_run_would_skip_a_reader(store, users, open_page):
    at = open_page("adapters.py", users["coord"])
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "next nightly run" in d.value.columns)
    assert table.set_index("reader").loc["rad1", "next nightly run"] == "0 new ratings (< 20)"
