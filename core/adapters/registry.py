"""Per-radiologist adapters: a versioned registry on disk and personalised drafting.

A radiologist's **adapter** has two parts, versioned, evaluated and promoted together:

1. **LoRA weights** trained by the nightly job (DPO on their preference pairs, or GRPO), files
   ``adapter_config.json`` + ``adapter_model.safetensors``;
2. **memory**: their accepted impressions (their edits) on training reports, ``memory.jsonl``,
   used for retrieval-conditioned drafting: the most similar reports from their own memory are
   the few-shot examples of the prompt and the neighbours of the consensus vote, so the draft
   follows their phrasing and layout.

Layout (``settings().adapters_dir``)::

    <reader>/v1/              adapter files, memory.jsonl, manifest.json (run, metrics, config)
    <reader>/v2/
    <reader>/ACTIVE.json      pointer to the active version (mirror of the database)
    <reader>/.tmp-*           a version being written (removed at the next nightly start)

A version's files are always ``<reader>/v<N>`` of *this* database's adapters folder
(:func:`version_dir`); the ``path`` recorded with it says where it was written. A backup holds
the database only: restored under another database's path, its versions name folders of the
database it was taken from, which are never used (two databases never share adapters);
:func:`versions_without_files` lists them so that ``restore`` can say their files were not
restored.

A version directory appears only complete: it is written under ``.tmp-*`` and renamed into
place with ``os.replace``. The database is the authority on which version is active
(``active_adapters``): promotion and rollback change it in ONE transaction together with the
event log and the audit log; the pointer file is then replaced atomically (and re-synced from
the database at every nightly start, so a crash between the two heals itself).

Drafting (:class:`Drafter`) serves many readers at once: one ``Generator.generate`` call with a
per-row adapter name (PEFT mixed-adapter batches), each row prompted with its own reader's memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from core.accounts.auth import User, authorize
from core.config import settings
from core.errors import (  # noqa: F401 (defined in core.errors)
    AdapterRegistryError,
    GateRejected,
    ImpressionistError,
    NotFound,
    PermissionDenied,
    UnknownVersion,
    ValidationError,
)
from core.store.accounts import Reader

__all__ = ["AdapterRegistryError", "GateRejected", "UnknownVersion", "AdapterVersion",
           "reader_dir", "version_dir", "versions_without_files", "active_adapter", "get_version", "list_versions", "allocate_version",
           "commit_version", "promote", "rollback", "sync_pointers", "cleanup_partial", "read_memory",
           "write_memory", "DraftConfig", "Drafter", "DraftOutput", "shared_adapter_dir"]

MANAGERS = ("coordinator", "admin")
POINTER = "ACTIVE.json"
MEMORY_FILE = "memory.jsonl"
MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v(\d+)$")


@dataclass
class AdapterVersion:
    """One version of one radiologist's adapter."""
    reader: str
    reader_id: int
    version: int
    path: Path
    status: str = "candidate"
    method: str | None = None
    metrics: dict = field(default_factory=dict)
    alias: str | None = None  # a different name in the Generator (e.g. a candidate under test)

    @property
    def name(self) -> str:
        """The adapter's name in ``generations.adapter``: the username."""
        return self.reader

    @property
    def gen_name(self) -> str:
        """The adapter's name inside the Generator (PEFT forbids "." in adapter names)."""
        return (self.alias or self.reader).replace(".", "__dot__")

    @property
    def has_lora(self) -> bool:
        return (self.path / "adapter_config.json").is_file()

    def memory(self) -> list[dict]:
        return read_memory(self.path)


def reader_dir(username: str) -> Path:
    """The folder of one reader's adapter versions."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", username or "") or username in (".", ".."):
        raise ValidationError(f"reader name {username!r} cannot name an adapter folder")
    return settings().adapters_dir / username


def version_dir(username: str, version: int) -> Path:
    """Where the files of one version live: in this database's adapters folder, whatever path
    the version was recorded with (a restored backup's rows name another database's folders).
    """
    return reader_dir(username) / f"v{version}"


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def read_memory(path: str | Path) -> list[dict]:
    """The accepted impressions stored with an adapter version (empty when none)."""
    f = Path(path) / MEMORY_FILE
    if not f.is_file():
        return []
    out = []
    for line in f.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def write_memory(path: str | Path, memory: Sequence[dict]) -> None:
    """Write accepted impressions (report_id, findings, impression, ...) as JSONL."""
    keep = ("report_id", "external_id", "findings", "indication", "comparison", "impression")
    with (Path(path) / MEMORY_FILE).open("w", encoding="utf-8") as fh:
        for m in memory:
            fh.write(json.dumps({k: m.get(k) for k in keep}, ensure_ascii=False) + "\n")


DRAFT_SETTINGS_FILE = "draft.json"


def read_draft_settings(path: str | Path) -> dict:
    """A version's drafting settings (``memory_bonus`` chosen by :func:`tune_memory_bonus`);
    empty for versions made before there were any (they draft with ``DraftConfig``)."""
    f = Path(path) / DRAFT_SETTINGS_FILE
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_draft_settings(path: str | Path, settings_: dict) -> None:
    (Path(path) / DRAFT_SETTINGS_FILE).write_text(json.dumps(settings_, indent=2),
                                                 encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def _reader(store, reader: str | int):

    if isinstance(reader, Reader):
        return reader
    if isinstance(reader, int):
        return store.get_reader_by_id(reader)
    try:
        return store.get_reader(reader)
    except NotFound:
        raise ValidationError(f"no user named {reader!r}") from None


def _version_from_row(row: dict, username: str) -> AdapterVersion:
    return AdapterVersion(username, row["reader_id"], row["version"],
                          version_dir(username, row["version"]),
                          row.get("status") or "candidate", row.get("method"),
                          row.get("metrics") or {})


def active_adapter(store, reader: str | int) -> AdapterVersion | None:
    """The reader's active adapter version, or None when their drafts use the shared model."""
    r = _reader(store, reader)
    row = store.active_adapter_row(r.id)
    if row is None:
        return None
    return _version_from_row(row, r.username)


def get_version(store, reader: str | int, version: int) -> AdapterVersion:
    r = _reader(store, reader)
    row = store.get_adapter(r.id, version)
    if row is None:
        raise UnknownVersion(f"{r.username} has no adapter version {version}")
    return _version_from_row(row, r.username)


def list_versions(store, user: User | None = None, reader: str | None = None) -> list[dict]:
    """Adapter versions with status, metrics and whether active (coordinators and admins).

    Each row also has ``state``, what the version is now: ``active``; ``rolled back`` or
    ``superseded`` for a version that was active until a rollback or a newer promotion took
    it out of service (its ``status`` stays ``promoted``); else ``candidate`` or ``rejected``.
    """
    if user is not None:
        authorize(store, user, *MANAGERS)
    rid = _reader(store, reader).id if reader else None
    left: dict[tuple[str, int], str] = {}  # (reader, version) -> how it last left service
    for e in sorted(store.adapter_events(rid, limit=2**31 - 1), key=lambda e: e["id"]):
        if e["previous_version"] is not None and e["previous_version"] != e["version"]:
            left[(e["reader"], e["previous_version"])] = (
                "rolled back" if e["action"] == "rollback" else "superseded")
    rows = store.adapters_of(rid)
    for r in rows:
        r["state"] = ("active" if r["active"] else
                      left.get((r["reader"], r["version"]), r["status"]))
        r["path"] = str(version_dir(r["reader"], r["version"]))  # its files, in this database's home
    return rows


def versions_without_files(store) -> list[dict]:
    """The adapter versions of ``store`` whose files are not in this database's adapters folder:
    the folder is missing, or the version was written under another folder (a backup of another
    database restored here: the folder here, if any, holds another version of that number).
    What ``restore`` reports: a backup holds the database, not the adapter files.

    Returns:
        Dicts with ``reader``, ``version``, ``written_to`` (the recorded path) and ``here``.
    """
    out = []
    for r in store.adapters_of(None):
        here = version_dir(r["reader"], r["version"])
        if not here.is_dir() or Path(r["path"]).resolve() != here.resolve():
            out.append({"reader": r["reader"], "version": r["version"],
                        "written_to": r["path"], "here": str(here)})
    return out


def _disk_versions(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_DIR.match(p.name)))


def allocate_version(store, reader: str | int) -> tuple[int, Path]:
    """The next version number and a fresh temporary folder to write it into.

    The number is above every version in the database and on disk (a crash can leave a renamed
    folder whose row was never written).
    """
    r = _reader(store, reader)
    folder = reader_dir(r.username)
    version = max([store.max_adapter_version(r.id), *_disk_versions(folder)], default=0) + 1
    tmp = folder / f".tmp-v{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return version, tmp


def commit_version(store, reader: str | int, version: int, tmp: Path, run_id: int | None,
                   method: str, metrics: dict | None, status: str = "candidate",
                   base_model: str | None = None) -> AdapterVersion:
    """Rename a finished temporary folder to ``v<version>`` and record it in the database."""
    r = _reader(store, reader)
    final = version_dir(r.username, version)
    if final.exists():
        raise AdapterRegistryError(f"{final} already exists; refusing to overwrite a version")
    os.replace(tmp, final)
    store.add_adapter(r.id, version, str(final), run_id, method, base_model, metrics, status)
    return AdapterVersion(r.username, r.id, version, final, status, method, metrics or {})


def _write_pointer(username: str, version: int | None) -> None:
    folder = reader_dir(username)
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / POINTER
    if version is None:
        pointer.unlink(missing_ok=True)
        return
    tmp = folder / f".{POINTER}.{os.getpid()}"
    tmp.write_text(json.dumps({"version": version, "path": str(folder / f"v{version}"),
                               "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    os.replace(tmp, pointer)


def read_pointer(username: str) -> int | None:
    """The version named by a reader's pointer file (None when absent)."""
    try:
        return int(json.loads((reader_dir(username) / POINTER).read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _actor(store, user: User | None, actor: str | None) -> str:
    """Who promotes or rolls back: a signed-in coordinator/admin, checked against the store, or
    a system job that names itself (``actor``: the nightly job, the CLI); never nobody."""
    if user is not None:
        authorize(store, user, *MANAGERS)
        return user.username
    if not actor:
        raise PermissionDenied("sign in first (or name the system job that acts: actor=...)")
    return actor


def promote(store, reader: str | int, version: int, *, user: User | None = None,
            actor: str | None = None, reason: str | None = None,
            override_gate: bool = False) -> int | None:
    """Make ``version`` the reader's active adapter (atomic). Returns the previous version.

    Args:
        store: the store.
        reader: username or id.
        version: an existing version of this reader.
        user: the signed-in coordinator/admin (checked), or None for the nightly job / CLI.
        actor: who to record when ``user`` is None.
        reason: recorded in the event log.
        override_gate: promote a version the nightly gate rejected (it did not beat the
            active one on held-out feedback, or lost critical findings); recorded in the log.

    Raises:
        GateRejected: the gate rejected this version and ``override_gate`` is False.
        AdapterRegistryError: the version does not exist or its files are missing.
    """
    who = _actor(store, user, actor)
    av = get_version(store, reader, version)
    if av.status == "rejected":
        if not override_gate:
            raise GateRejected(
                f"{av.reader} v{version} was rejected by the nightly gate (it did not beat "
                f"the active version on held-out feedback, or it lost critical findings); "
                f"promoting it needs an explicit override (--override-gate on the command "
                f"line); nothing was changed")
        reason = f"{reason or 'promoted'} (overriding the gate's rejection)"
    if not av.path.is_dir():
        raise AdapterRegistryError(f"adapter folder {av.path} is missing; cannot promote "
                                   f"{av.reader} v{version}")
    current = store.active_adapter_row(av.reader_id)
    if current is not None and current["version"] == version:
        return version  # already active: nothing to do, nothing to log
    previous = store.set_active_adapter(av.reader_id, version, "promote", who, reason)
    _write_pointer(av.reader, version)
    return previous


def rollback_preview(store, reader: str | int, user: User) -> tuple[int, int | None] | None:
    """What :func:`rollback` would do now: (from_version, to_version; None: the shared
    model), or None when the reader has no active adapter. For a confirmation prompt."""
    authorize(store, user, *MANAGERS)
    r = _reader(store, reader)
    current = store.active_adapter_row(r.id)
    if current is None:
        return None
    return current["version"], store.version_before(r.id, current["version"])


def rollback(store, reader: str | int, to_version: int | None = None, *,
             user: User | None = None, actor: str | None = None) -> tuple[int | None, int | None]:
    """Go back to the version that was active before the current one (or to ``to_version``).

    Returns:
        (from_version, to_version); ``to_version`` None means the shared model.

    Raises:
        AdapterRegistryError: nothing to roll back (no active adapter).
    """
    who = _actor(store, user, actor)
    r = _reader(store, reader)
    current = store.active_adapter_row(r.id)
    if current is None:
        raise AdapterRegistryError(f"{r.username} has no active adapter to roll back")
    target = to_version if to_version is not None else store.version_before(
        r.id, current["version"])
    if target is not None:
        av = get_version(store, r.id, target)
        if not av.path.is_dir():
            raise AdapterRegistryError(f"adapter folder {av.path} is missing")
    store.set_active_adapter(r.id, target, "rollback", who,
                             f"rollback from v{current['version']}")
    _write_pointer(r.username, target)
    return current["version"], target


def sync_pointers(store) -> int:
    """Rewrite every pointer file from the database (the authority). Returns how many changed."""
    changed = 0
    active = {row["reader"]: row["version"] for row in store.active_adapters()}
    root = settings().adapters_dir
    names = set(active) | ({p.name for p in root.iterdir() if p.is_dir()} if root.is_dir()
                           else set())
    for name in sorted(names):
        try:
            if read_pointer(name) != active.get(name):
                _write_pointer(name, active.get(name))
                changed += 1
        except ValidationError:
            continue
    return changed


def cleanup_partial() -> list[Path]:
    """Remove half-written version folders (``.tmp-*``) left by a killed run."""
    root = settings().adapters_dir
    removed = []
    if root.is_dir():
        for tmp in root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------------------------
# personalised drafting (through the app's coarse-to-fine pipeline)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# what the Adapters page shows (coordinators and admins)
# ---------------------------------------------------------------------------------------------


def runs_table(store, user: User, reader: str | None = None, limit: int = 500):
    """Training runs, newest first, as a DataFrame with the held-out metrics flattened."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    authorize(store, user, *MANAGERS)
    rid = _reader(store, reader).id if reader else None
    rows = []
    for r in store.training_runs(rid, limit=limit):
        m, b = r.get("metrics") or {}, r.get("baseline_metrics") or {}
        rows.append({
            "run": r["id"], "reader": r["reader"], "method": r["method"], "status": r["status"],
            "decision": r["decision"], "version": r["adapter_version"],
            "started": r["started_at"], "finished": r["finished_at"],
            "pairs": r["n_train_pairs"], "held-out pairs": r["n_heldout_pairs"],
            "steps": r["steps"], "wall s": r["wall_s"], "pairs/s": r["pairs_per_s"],
            "ROUGE-L": m.get("rougeL"), "ROUGE-L before": b.get("rougeL"),
            "label F1": m.get("label_f1"), "critical recall": m.get("critical_recall"),
            "pref. acc.": m.get("pref_acc"), "reason": r["reason"] or r["error"]})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # whole numbers stay whole (a missing version must not turn every other one into 3.0)
    return frame.astype({c: "Int64" for c in ("run", "version", "pairs", "held-out pairs",
                                              "steps")})


def active_table(store, user: User):
    """One row per radiologist: active version (or the shared model), its metrics, when/by whom."""
    import pandas as pd  # deferred: pandas is slow to import; only tables for the pages need it

    authorize(store, user, *MANAGERS)
    active = {row["reader"]: row for row in store.active_adapters()}
    rows = []
    for r in store.list_readers():
        if r.role not in ("radiologist", "admin"):
            continue
        a = active.get(r.username)
        m = (a or {}).get("metrics") or {}
        rows.append({"reader": r.username, "active": f"v{a['version']}" if a else "shared model",
                     "method": a["method"] if a else None, "ROUGE-L (held-out)": m.get("rougeL"),
                     "label F1": m.get("label_f1"), "since": a["updated_at"] if a else None,
                     "by": a["updated_by"] if a else None})
    return pd.DataFrame(rows)
