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
from typing import Any, Sequence

from core.accounts.auth import User, authorize
from core.config import settings
from core.errors import ImpressionistError, NotFound, PermissionDenied, ValidationError
from core.errors import AdapterRegistryError, UnknownVersion  # noqa: F401 (defined in core.errors)

__all__ = ["AdapterRegistryError", "UnknownVersion", "AdapterVersion", "reader_dir",
           "active_adapter", "get_version", "list_versions", "allocate_version", "commit_version",
           "promote", "rollback", "sync_pointers", "cleanup_partial", "read_memory",
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


def shared_adapter_dir() -> Path | None:
    """The shared base LoRA adapter (every reader's starting point), or None when absent.

    Looks at ``$IMPRESSIONIST_BASE_ADAPTER``, then at ``core.learning.sft``'s shipped adapter location.
    """
    env = os.environ.get("IMPRESSIONIST_BASE_ADAPTER")
    candidates: list[Path] = [Path(env)] if env else []
    try:
        from core.learning import sft  # noqa: F401  (issue 4's module; optional)

        for attr in ("BASE_ADAPTER_DIR", "DEFAULT_ADAPTER_DIR", "ADAPTER_DIR"):
            if getattr(sft, attr, None):
                candidates.append(Path(getattr(sft, attr)))
        fn = getattr(sft, "base_adapter_dir", None)
        if callable(fn):
            found = fn()
            if found:
                candidates.append(Path(found))
    except ImportError:
        pass
    from core.generation.models import AdapterError, check_adapter_files

    for c in candidates:
        if (c / "adapter_config.json").is_file():
            try:
                check_adapter_files(c)  # a damaged shared adapter: fall back to the bare base
            except AdapterError:
                continue
            return c
    return None


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
    from core.store.accounts import Reader

    if isinstance(reader, Reader):
        return reader
    if isinstance(reader, int):
        return store.get_reader_by_id(reader)
    try:
        return store.get_reader(reader)
    except NotFound:
        raise ValidationError(f"no user named {reader!r}") from None


def _version_from_row(row: dict, username: str) -> AdapterVersion:
    return AdapterVersion(username, row["reader_id"], row["version"], Path(row["path"]),
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
    return rows


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
    final = reader_dir(r.username) / f"v{version}"
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
            actor: str | None = None, reason: str | None = None) -> int | None:
    """Make ``version`` the reader's active adapter (atomic). Returns the previous version.

    Args:
        store: the store.
        reader: username or id.
        version: an existing version of this reader.
        user: the signed-in coordinator/admin (checked), or None for the nightly job / CLI.
        actor: who to record when ``user`` is None.
        reason: recorded in the event log.

    Raises:
        AdapterRegistryError: the version does not exist or its files are missing.
    """
    who = _actor(store, user, actor)
    av = get_version(store, reader, version)
    if not av.path.is_dir():
        raise AdapterRegistryError(f"adapter folder {av.path} is missing; cannot promote "
                                   f"{av.reader} v{version}")
    previous = store.set_active_adapter(av.reader_id, version, "promote", who, reason)
    _write_pointer(av.reader, version)
    return previous


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


@dataclass
class DraftConfig:
    """How drafts are written.

    Attributes:
        min_memory: a reader memory smaller than this falls back to the shared memory.
        memory_bonus: similarity added to neighbours from the reader's own memory, for versions
            without their own (the nightly job chooses one per version by leave-one-out on
            the memory, :func:`tune_memory_bonus`, and stores it in the version's draft.json).
        guard: content guard: a personalised text must state every positive finding of the
            shared model's text for the row, and nothing more than that plus what the Findings
            state (``core.clinical.checks.label``); otherwise the reader's own impression of the most
            similar report that does is used, else the shared text. Personalisation changes how
            things are said, never what is found.
        c2f: settings of :class:`core.generation.pipeline.CoarseToFine` (None: its defaults, the app's).
    """

    min_memory: int = 3
    memory_bonus: float = 0.3
    guard: bool = True
    c2f: Any = None


@dataclass
class DraftOutput:
    text: str
    latency_ms: float
    flags: dict = field(default_factory=dict)


def _memory_uid(m: dict):
    """How a memory item is named in its retrieval index (and left out of its own search)."""
    return m.get("external_id") or m.get("uid") or m.get("report_id")


class RoutedIndex:
    """A retrieval index that answers each query from its reader's memory *and* the shared index.

    ``CoarseToFine`` calls ``index.search(queries, ...)``; a query dict may carry ``_memory`` (a
    key of ``memories``). Its neighbours are then the reader's own accepted impressions, their
    similarity raised by ``memory_bonus``, merged with the shared index's neighbours (the same
    report in both counts once, as the reader's version): the reader's phrasing wins wherever
    they have written about similar findings, and the shared index still covers findings they
    have not. Queries without a memory use the shared index alone.
    """

    def __init__(self, shared, memories: dict[str, Any], memory_bonus: float = 0.3,
                 bonuses: dict[str, float] | None = None) -> None:
        self.shared = shared
        self.memories = memories
        self.memory_bonus = memory_bonus
        self.bonuses = bonuses or {}

    def __len__(self) -> int:
        return len(self.shared) if self.shared is not None else 0

    def search(self, reports, k: int = 10, exclude_uids=None, exclude_self: bool = False):
        reports = list(reports)
        excl = exclude_uids if exclude_uids else None
        shared = (self.shared.search(reports, k=k, exclude_uids=excl, exclude_self=exclude_self)
                  if self.shared is not None else [[] for _ in reports])
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(reports):
            key = r.get("_memory")
            if key in self.memories:
                groups.setdefault(key, []).append(i)
        for key, rows in groups.items():
            found = self.memories[key].search(
                [reports[i] for i in rows], k=k,
                exclude_uids=[excl[i] for i in rows] if excl else None, exclude_self=exclude_self)
            bonus = self.bonuses.get(key, self.memory_bonus)
            for i, own in zip(rows, found):
                for nb in own:
                    nb.score += bonus
                mine = {nb.uid for nb in own if nb.uid is not None}
                merged = own + [nb for nb in shared[i] if nb.uid is None or nb.uid not in mine]
                merged.sort(key=lambda nb: -nb.score)
                shared[i] = merged[:k]
        return shared


class Drafter:
    """Writes impressions for (report, reader adapter) rows with the app's coarse-to-fine pipeline.

    Every row may belong to another reader: their LoRA weights draft the row (PEFT mixed-adapter
    batches, one ``generate`` call for all rows) and their memory is the row's retrieval index
    (few-shot examples and the consensus vote). Rows without a reader adapter get the shared
    model: the shared index, and the shared base adapter for drafts.

    Args:
        generator: a ``core.generation.models.Generator`` (None: retrieval only; LoRA parts are then off).
        shared_index: a ``core.generation.retrieval.RetrievalIndex`` over past reports, or a list of report
            dicts to build one from.
        config: drafting settings.
        shared_adapter: name of the shared base adapter loaded in the generator (None: bare base).
    """

    def __init__(self, generator, shared_index=None, config: DraftConfig | None = None,
                 shared_adapter: str | None = None) -> None:
        from core.generation.pipeline import C2FConfig

        self.generator = generator
        self.config = config or DraftConfig()
        self.c2f = self.config.c2f or C2FConfig()
        self.shared_adapter = shared_adapter
        if shared_index is not None and not hasattr(shared_index, "search"):
            shared_index = self._index(list(shared_index), None)
        self.shared_index = shared_index
        self._indexes: dict[str, Any] = {}
        self._bonuses: dict[str, float] = {}

    def _index(self, memory: Sequence[dict], reader: str | None):
        from core.generation.retrieval import RetrievalIndex

        rows = [m for m in memory if (m.get("findings") or "").strip() and
                (m.get("impression") or "").strip()]
        if not rows:
            return None
        return RetrievalIndex.build(
            [{**m, "uid": _memory_uid(m), "author": reader or m.get("author")} for m in rows],
            self.c2f.retrieval)

    @staticmethod
    def _key(av: AdapterVersion) -> str:
        return f"{av.reader}@{av.path}"

    def _memory_key(self, av: AdapterVersion) -> str | None:
        key = self._key(av)
        if key not in self._indexes:
            mem = av.memory()
            self._indexes[key] = (self._index(mem, av.reader) if len(mem) >= self.config.min_memory
                                  else None)
            bonus = read_draft_settings(av.path).get("memory_bonus")
            if isinstance(bonus, (int, float)) and not isinstance(bonus, bool):
                self._bonuses[key] = float(bonus)
        return key if self._indexes[key] is not None else None

    def forget(self, av: AdapterVersion) -> None:
        """Drop what is cached for a version (its memory index and settings were rewritten)."""
        key = self._key(av)
        self._indexes.pop(key, None)
        self._bonuses.pop(key, None)

    def draft(self, reports: Sequence[dict], adapters: Sequence[AdapterVersion | None],
              use_lora: bool = True, use_memory: bool = True, style: str = "default",
              batch_size: int = 8, progress: bool = False,
              memory_bonus: float | None = None) -> list[DraftOutput]:
        """Draft one impression per report with that row's reader adapter.

        Args:
            reports: dicts with findings (and indication, comparison, external_id/uid, id).
            adapters: per row the reader's adapter version, or None for the shared model.
            use_lora: apply the rows' LoRA weights (False: shared weights; ablation).
            use_memory: retrieve from the rows' reader memory (False: shared memory; ablation).
            style: the audience style (``core.generation.styles``).
            batch_size: model batch size.
            progress: show a progress bar over generation batches.
            memory_bonus: use this bonus for every row's memory (tuning); None: each version's
                own (its ``draft.json``), else ``DraftConfig.memory_bonus``.

        Returns:
            One :class:`DraftOutput` per report, in order; ``flags`` are the pipeline's flags plus
            ``adapter_version`` and ``memory`` (which memory the row retrieved from).
        """
        from core.generation.pipeline import CoarseToFine

        if len(reports) != len(adapters):
            raise ValidationError(f"{len(reports)} reports but {len(adapters)} adapters")
        if not reports:
            return []
        from core.generation.models import AdapterError

        names: list[str | None] = []
        rows: list[dict] = []
        readers: list[str | None] = []
        memories: list[str] = []
        broken: dict[int, str] = {}
        for i, (r, av) in enumerate(zip(reports, adapters)):
            name = None
            if av is not None and use_lora and av.has_lora and self.generator is not None:
                try:
                    if self.generator.adapters.get(av.gen_name) != av.path.resolve():
                        self.generator.load_adapter(av.gen_name, av.path)
                    name = av.gen_name
                except AdapterError as exc:
                    # A damaged version (truncated weights): draft with the shared weights and
                    # say so in the row's flags instead of failing every row of the batch.
                    broken[i] = str(exc)
            names.append(name)
            key = self._memory_key(av) if av is not None and use_memory else None
            memories.append(key.split("@")[0] + f"@v{av.version}" if key else "shared")
            rows.append({**r, "uid": r.get("uid", r.get("external_id")), "_memory": key})
            readers.append(av.reader if av is not None else None)
        index = RoutedIndex(self.shared_index, {k: v for k, v in self._indexes.items()
                                                if v is not None},
                            self.config.memory_bonus if memory_bonus is None else memory_bonus,
                            {} if memory_bonus is not None else self._bonuses)
        pipeline = CoarseToFine(index if (self.shared_index is not None or index.memories)
                                else None, self.generator, self.c2f,
                                base_adapter=self.shared_adapter)
        t0 = time.perf_counter()
        outputs = pipeline.generate(rows, style=style, reader=readers, adapter=names,
                                    batch_size=batch_size, progress=progress)
        personal = [i for i, (n, r) in enumerate(zip(names, rows)) if n or r["_memory"]]
        guarded: dict[int, tuple[str, str]] = {}
        if self.config.guard and personal and self.shared_index is not None:
            guarded = self._guard(personal, rows, outputs, style)
        per_ms = (time.perf_counter() - t0) * 1000 / len(rows)
        out = []
        for i, (o, av, mem) in enumerate(zip(outputs, adapters, memories)):
            flags = dict(o.flags)
            flags["adapter_version"] = av.version if av is not None else None
            flags["memory"] = mem
            text = o.text
            if i in broken:
                flags["adapter_error"] = broken[i]
            if i in guarded:
                text, flags["guard"], checked = guarded[i]
                flags.update(checked)  # the replacement's own clinical check, as shown
            out.append(DraftOutput(text, per_ms, flags))
        return out

    def _guard(self, personal: list[int], rows: list[dict], outputs: list, style: str
               ) -> dict[int, tuple[str, str, dict]]:
        """Rows whose personalised text states other findings than the shared model's text:
        row -> (replacement, how, check flags) with how = "memory" (the reader's own impression
        of a similar report that states the shared findings, verified and styled as any shown
        text) or "shared"."""
        from dataclasses import replace

        from core.clinical.checks import PRESENT, label
        from core.generation.pipeline import CoarseToFine, checked_text
        from core.generation.retrieval import tidy

        def positives(text: str) -> frozenset:
            return frozenset(k for k, v in label(text).items() if v in PRESENT and
                             k != "No Finding")

        shared_rows = [{**rows[i], "_memory": None} for i in personal]
        retrieval_only = CoarseToFine(self.shared_index, None, replace(self.c2f, llm="off"))
        shared_out = retrieval_only.generate(shared_rows, style=style)
        result: dict[int, tuple[str, str]] = {}
        for i, s in zip(personal, shared_out):
            want = positives(s.text)
            # A personal text may state more than the shared one only where the Findings do:
            # a reader's draft that names the effusion the shared text missed is kept.
            supported = want | positives(rows[i]["findings"])

            def faithful(text: str) -> bool:
                found = positives(text)
                return want <= found <= supported

            if faithful(outputs[i].text):
                continue
            key = rows[i]["_memory"]
            check_keys = ("repaired", "removed", "check_ok", "missing_critical", "contradictions",
                          "unsupported", "normal_despite", "messages", "needs_review")
            choice = (s.text, "shared", {k: s.flags[k] for k in check_keys if k in s.flags})
            if key is not None:
                own = self._indexes[key].search([rows[i]], k=self.c2f.k, exclude_self=True)[0]
                for nb in own:
                    if faithful(nb.impression):
                        text, checked = checked_text(rows[i], tidy(nb.impression), style,
                                                     repair=self.c2f.repair)
                        checked["needs_review"] = bool(checked["needs_review"]
                                                       or outputs[i].flags.get("low_confidence"))
                        choice = (text, "memory", checked)
                        break
            result[i] = choice
        return result


BONUS_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def tune_memory_bonus(drafter: Drafter, av: AdapterVersion, grid: Sequence[float] = BONUS_GRID,
                      max_items: int = 200) -> dict:
    """Choose how strongly a reader's memory outranks the shared index, by leave-one-out on
    the memory itself (never on the held-out slice, which the gate then judges on).

    Each of the (at most ``max_items`` most recent) memory reports is drafted with that report
    left out of both the memory and the shared index, once per bonus in ``grid``, and scored by
    ROUGE-L against the reader's own accepted impression; the best bonus wins, ties going to the
    smaller one (closer to the shared model). Readers who write like the department get a small
    bonus (their memory then only breaks ties); readers with a style of their own get a large
    one (BENCHMARKS.md, "Personalization").

    Returns:
        ``{"memory_bonus": best, "loo_rougeL": {bonus: score}, "loo_n": n}`` (``memory_bonus``
        is ``DraftConfig.memory_bonus`` when the memory is too small to judge).
    """
    from core.evaluation.metrics import rouge

    mem = [m for m in av.memory() if (m.get("findings") or "").strip() and
           (m.get("impression") or "").strip()][-max_items:]
    if len(mem) < max(drafter.config.min_memory, 5):
        return {"memory_bonus": drafter.config.memory_bonus, "loo_rougeL": {}, "loo_n": len(mem)}
    rows = [{"findings": m["findings"], "indication": m.get("indication"),
             "comparison": m.get("comparison"), "id": m.get("report_id"),
             "uid": _memory_uid(m)} for m in mem]
    refs = [m["impression"] for m in mem]
    scores: dict[float, float] = {}
    for bonus in grid:
        outs = drafter.draft(rows, [av] * len(rows), use_lora=False, memory_bonus=bonus)
        scores[float(bonus)] = rouge([o.text for o in outs], refs)["rougeL"]
    best = max(sorted(scores), key=lambda b: (round(scores[b], 6), -b))
    return {"memory_bonus": best, "loo_rougeL": {str(b): round(v, 3) for b, v in scores.items()},
            "loo_n": len(mem)}


def refresh_drafts(store, drafter: Drafter, readers: Sequence[str], per_reader: int = 20,
                   model_name: str | None = None, progress: bool = False) -> int:
    """Pre-generate drafts with each reader's active adapter for their next unrated reports,
    all readers in one mixed-adapter batch, and store them (``generations.adapter`` = username,
    ``adapter_version`` = version). Returns how many were stored."""
    rows: list[dict] = []
    avs: list[AdapterVersion] = []
    for name in readers:
        av = active_adapter(store, name)
        if av is None:
            continue
        r = store.get_reader(name)
        for rep in store.pending_reports_for(r.id, av.name, per_reader):
            rows.append(rep)
            avs.append(av)
    if not rows:
        return 0
    outputs = drafter.draft(rows, avs, progress=progress)
    model = model_name or getattr(drafter.generator, "name", None) or "retrieval"
    store.add_generations({"report_id": rep["id"], "model": model, "adapter": av.name,
                           "adapter_version": av.version, "style": "default", "text": o.text,
                           "flags": o.flags, "latency_ms": o.latency_ms}
                          for rep, av, o in zip(rows, avs, outputs))
    return len(rows)


# ---------------------------------------------------------------------------------------------
# what the Adapters page shows (coordinators and admins)
# ---------------------------------------------------------------------------------------------


def runs_table(store, user: User, reader: str | None = None, limit: int = 500):
    """Training runs, newest first, as a DataFrame with the held-out metrics flattened."""
    import pandas as pd

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
    return pd.DataFrame(rows)


def active_table(store, user: User):
    """One row per radiologist: active version (or the shared model), its metrics, when/by whom."""
    import pandas as pd

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
