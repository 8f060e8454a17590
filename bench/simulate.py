"""``python bench/personalization.py``: proof that per-radiologist adapters personalise, on real reports.

Two benchmarks on IU X-ray (``../shared/data/iu_xray/reports.csv``), both end to end through the
code the app runs: reports imported with the IU importer, readers created with ``core.accounts.auth``,
shared AI drafts written by the coarse-to-fine pipeline and stored as generations, every piece
of feedback saved with ``core.feedback.annotate.submit_rating`` (the app's save path), pairs built by
``core.learning.pairs``, the nightly job (``core.learning.nightly.run_nightly``: train, gate, promote), and test
drafts written with each reader's *active* adapter in mixed-adapter batches
(``core.generation.personal.Drafter``). Each reader's reports are split by uid into a feedback part and a
test part that nothing ever trains or retrieves on.

1. ``real``: the 8 largest groups of the normalised ``image`` exam header (a proxy for the
   dictating radiologist's template) are the readers; their feedback on an AI impression is an
   edit into their original impression, plus a rating by similarity.
2. ``styles``: 4 simulated readers over the *same* reports, each rewriting the original impression
   into a consistent style of their own (:data:`STYLES`); only a per-reader adapter can win.

Feedback arrives in steps (``--points``, cumulative items per reader); after each step the
nightly job runs. By default the intermediate nights are memory-only (cheap: the new version
carries the reader's accepted impressions) and the last night trains LoRA weights with DPO
(``--lora-points``). Reported per reader and macro-averaged: ROUGE-L and clinical label F1 of the
shared model and of the reader's active adapter against the reader's own text, the feedback items
used, the nightly job's pairs/s and wall time, an ablation at the end (shared, memory only, LoRA
only, both) and a learning curve (``bench/out/<bench>/learning_curve.html`` and ``.svg``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core.accounts import auth
from core.adapters.base import use_base_adapter
from core.adapters.registry import AdapterVersion, active_adapter, read_memory
from core.clinical.labeler import is_normal
from core.config import ROOT, settings, use_settings
from core.evaluation.metrics import label_f1, rouge, rouge_l
from core.feedback import annotate
from core.generation.models import ModelSpec, load_generator
from core.generation.personal import DraftConfig, Drafter
from core.generation.pipeline import C2FConfig
from core.generation.retrieval import RetrievalIndex, tidy
from core.ingest.reports import import_file
from core.learning.nightly import NightlyConfig, run_nightly
from core.learning.train import TrainConfig
from core.store.database import Store
from core.studies.figures import FigureSpec, Series, plotly_figure
from core.studies.report import svg

IU_CSV = ROOT.parent / "shared" / "data" / "iu_xray" / "reports.csv"
READER_PASSWORD = "Simulated-Passw0rd"


# ---------------------------------------------------------------------------------------------
# simulated styles (benchmark 2)
# ---------------------------------------------------------------------------------------------

_ENUM = re.compile(r"(?:^|\s)\d{1,2}[.)]\s+")
_SPLIT = re.compile(r"(?<=[.!?])\s+")
_LEAD = re.compile(r"^(?:there (?:is|are) (?:a |an |no evidence of )?|there has been |"
                   r"findings (?:are )?(?:consistent with|compatible with) )", re.I)
_TAIL = re.compile(r"\s+(?:is|are) (?:seen|noted|present|identified|demonstrated)$", re.I)


def impression_sentences(text: str) -> list[str]:
    """The sentences of an impression without list numbers and final periods."""
    text = " ".join((text or "").split())
    text = re.sub(r"\bx-XXXX\b", "x-ray", text)
    parts = []
    for chunk in _ENUM.split(" " + text):
        for s in _SPLIT.split(chunk.strip()):
            s = s.strip().rstrip(".").strip()
            if s and re.search(r"[A-Za-z]", s):
                parts.append(s)
    return parts


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _terse(s: str) -> str:
    s = _TAIL.sub("", _LEAD.sub("", s.strip()))
    return _cap(s)


_ABBREV = [(r"\bright\b", "R"), (r"\bleft\b", "L"), (r"\bbilateral\b", "b/l"),
           (r"\bwith\b", "w/"), (r"\bupper lobe\b", "UL"),
           (r"\blower lobe\b", "LL"), (r"\bchest x-ray\b", "CXR"),
           (r"\bstatus post\b", "s/p"), (r"\bapproximately\b", "approx")]


def style_numbered(text: str) -> str:
    """Reader A: a numbered list of terse findings; normal: '1. No acute cardiopulmonary process.'"""
    if is_normal(text):
        return "1. No acute cardiopulmonary process."
    return " ".join(f"{i}. {_terse(s)}." for i, s in enumerate(impression_sentences(text), 1))


def style_prose_recommend(text: str) -> str:
    """Reader B: full-sentence prose ending with a recommendation line; normal: a fixed sentence."""
    if is_normal(text):
        return "The heart and lungs are within normal limits. No acute disease is seen."
    body = " ".join(f"{_cap(s)}." for s in impression_sentences(text))
    return f"{body} Recommend clinical correlation and follow-up as needed."


def style_abbreviated(text: str) -> str:
    """Reader C: terse, lower-case, semicolons and abbreviations; normal: 'Neg CXR; no acute
    disease.'"""
    if is_normal(text):
        return "Neg CXR; no acute disease."
    out = []
    for s in impression_sentences(text):
        s = _terse(s).lower()
        for pat, rep in _ABBREV:
            s = re.sub(pat, rep, s)
        out.append(s)
    return "; ".join(out) + "."


def style_findings_first(text: str) -> str:
    """Reader D: 'Impression:'-free sentences each starting 'There is/are', own normal phrase."""
    if is_normal(text):
        return "Normal chest radiograph. No acute findings."
    out = []
    for s in impression_sentences(text):
        t = _terse(s)
        low = t[:1].lower() + t[1:]
        if re.match(r"^(?:no|negative|normal|stable|unchanged|clear)\b", low, re.I):
            out.append(f"{t}.")
        else:
            out.append(f"There is {low}.")
    return " ".join(out)


STYLES: dict[str, Callable[[str], str]] = {
    "numbered": style_numbered,
    "prose_recommend": style_prose_recommend,
    "abbreviated": style_abbreviated,
    "findings_first": style_findings_first,
}


# ---------------------------------------------------------------------------------------------
# real readers (benchmark 1)
# ---------------------------------------------------------------------------------------------


def normalize_header(header: str | None) -> str:
    """Normalise an IU ``image`` exam header: lower case, no dates/times/XXXX, no punctuation."""
    h = (header or "").lower().replace("x-xxxx", "x-ray").replace("a.m.", " ").replace("p.m.", " ")
    h = re.sub(r"\bxxxx\b", " ", h)
    h = re.sub(r"\b(?:am|pm|hours?|dated|at)\b", " ", h)
    h = re.sub(r"[^a-z0-9/ ]+", " ", h)
    return " ".join(h.split())


def _hash(*parts: Any) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def rating_by_similarity(ai_text: str, target: str) -> int:
    """The simulated rating of an AI impression against the reader's own text (-2..0)."""
    sim = rouge_l(ai_text, target)
    return 0 if sim >= 0.8 else -1 if sim >= 0.4 else -2


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class SimReader:
    name: str
    feedback: list[dict]  # store report rows, in the order feedback is given
    test: list[dict]
    target: Callable[[dict], str]
    label: str = ""


@dataclass
class SimConfig:
    points: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 200])
    lora_points: list[int] = field(default_factory=lambda: [200])
    test_size: int = 24
    real_readers: int = 8
    style_readers: int = 4
    max_pairs: int = 64
    epochs: float = 1.0
    batch_size: int = 4
    lora_layers: int | None = 8
    learning_rate: float = 2e-4
    threads: int | None = None
    csv: Path = IU_CSV
    out: Path = ROOT / "bench" / "out"
    model: str | None = None
    lora: bool = True
    memory_bonus: float = 0.3
    eval_reports: int = 16
    min_heldout: int = 10  # the nightly job's default (NightlyConfig.min_heldout_reports)


def _readers(kind: str, rows: list[dict], cfg: SimConfig) -> list[SimReader]:
    """Readers and their feedback/test parts (by uid hash) for one benchmark."""
    max_items = max(cfg.points)
    if kind == "real":
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(normalize_header(r.get("author")), []).append(r)
        biggest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:cfg.real_readers]
        out = []
        for i, (header, group) in enumerate(biggest, 1):
            group = sorted(group, key=lambda r: _hash("order", r["external_id"]))
            n_test = min(cfg.test_size, max(3, len(group) // 4))
            test = [r for r in group if _hash("test", r["external_id"]) % 4 == 0][:n_test]
            ids = {r["id"] for r in test}
            feedback = [r for r in group if r["id"] not in ids][:max_items]
            out.append(SimReader(f"hdr{i}", feedback, test,
                                 lambda r: tidy(r["impression"]), header))
        return out
    pool = sorted(rows, key=lambda r: _hash("pool", r["external_id"]))
    test = [r for r in pool if _hash("test", r["external_id"]) % 8 == 0][:cfg.test_size]
    ids = {r["id"] for r in test}
    feedback = [r for r in pool if r["id"] not in ids][:max_items]
    out = []
    for name in list(STYLES)[:cfg.style_readers]:
        fn = STYLES[name]
        out.append(SimReader(f"sim_{name}", feedback, test,
                             lambda r, fn=fn: fn(tidy(r["impression"])), name))
    return out


def _macro(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _score(preds: list[str], refs: list[str]) -> dict:

    if not preds:
        return {"rougeL": None, "label_f1": None}
    return {"rougeL": rouge(preds, refs)["rougeL"], "label_f1": 100 * label_f1(preds, refs)["micro_f1"]}


NEAR = 0.8  # issue 12: a test report "has a near neighbour" at TF-IDF cosine >= 0.8


def near_neighbour_split(readers, newest, test_owner, test_rows) -> list[bool]:
    """Per test row: does the reader's memory (their newest version's) hold a report whose
    findings are within TF-IDF cosine ``NEAR`` of it (the retrieval's own vectors)?"""
    from core.generation.retrieval import RetrievalIndex

    by_name = dict(zip(test_owner, newest))
    out = []
    k = 0
    for sr in readers:
        rows = test_rows[k:k + len(sr.test)]
        av = by_name.get(sr.name)
        mem = [m for m in (av.memory() if av is not None else []) if m.get("findings")]
        if rows and mem:
            index = RetrievalIndex.build([{**m, "uid": f"m{j}"} for j, m in enumerate(mem)])
            out += [bool(x >= NEAR) for x in index.similarities(rows).max(axis=1)]
        else:
            out += [False] * len(rows)
        k += len(sr.test)
    return out


def leak_check(store, readers: list[SimReader]) -> dict:
    """Count what of each reader's test part reached training: their feedback rows on test
    reports (pairs are built only from feedback), the items of any adapter version's memory on
    test reports, and test reports in the nightly job's held-out slice. All must be 0.

    Returns:
        ``{"feedback_on_test": n, "memory_on_test": n, "heldout_on_test": n}``.
    """
    out = {"feedback_on_test": 0, "memory_on_test": 0, "heldout_on_test": 0}
    for sr in readers:
        rid = store.get_reader(sr.name).id
        test_ids = {r["id"] for r in sr.test}
        out["feedback_on_test"] += sum(1 for f in store.feedback_for_training(rid)
                                       if f["report_id"] in test_ids)
        out["heldout_on_test"] += len(set(store.heldout_report_ids(rid)) & test_ids)
        for v in store.adapters_of(rid):
            out["memory_on_test"] += sum(1 for m in read_memory(v["path"])
                                         if m.get("report_id") in test_ids)
    return out


def run_bench(kind: str, cfg: SimConfig, generator=None, log: Callable[[str], None] = print) -> dict:
    """Run one benchmark end to end in ``<out>/<kind>/`` (a fresh database and adapters folder).

    Returns:
        The results dict (also written to ``<out>/<kind>/results.json``).
    """
    t_start = time.perf_counter()
    workdir = Path(cfg.out) / kind
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "data").mkdir(parents=True)
    # the benchmark's own database and adapters, passed in (the environment is left alone)
    data = workdir / "data"
    with use_settings(data_dir=data, db_path=data / "sim.duckdb", adapters_dir=data / "adapters"):
        return _run_bench(kind, cfg, generator, log, workdir, t_start)


def _run_bench(kind: str, cfg: SimConfig, generator, log, workdir: Path, t_start: float) -> dict:
    store = None
    try:
        store = Store(settings().db_path)
        store.migrate()
        imported = import_file(store, cfg.csv, fmt="iu-xray", actor="simulate")
        log(f"[{kind}] {imported.summary()}")
        rows = [r for r in store.reports() if (r.get("impression") or "").strip()
                and (r.get("findings") or "").strip()]
        readers = _readers(kind, rows, cfg)
        users = {}
        for sr in readers:
            auth.create_user(store, sr.name, "radiologist", READER_PASSWORD, actor="simulate")
            users[sr.name] = auth.sign_in(store, sr.name, READER_PASSWORD)
        test_ids = {r["id"] for sr in readers for r in sr.test}
        c2f = C2FConfig()
        shared_index = RetrievalIndex.build(
            [{**r, "uid": r["external_id"]} for r in rows if r["id"] not in test_ids],
            c2f.retrieval)
        if generator is None and cfg.lora:

            generator = load_generator(ModelSpec(path=cfg.model or settings().model_path, device="cpu"))
        draft_cfg = DraftConfig(c2f=c2f, memory_bonus=cfg.memory_bonus)
        # the shared base adapter (when one is shipped) drafts for the shared model, exactly as
        # the nightly job's drafter (core.generation.personal.load_drafter) and the app use it

        shared_name = use_base_adapter(generator)
        drafter = Drafter(generator, shared_index, draft_cfg, shared_adapter=shared_name)
        log(f"[{kind}] {len(readers)} readers: " + ", ".join(
            f"{sr.name} ({len(sr.feedback)} feedback, {len(sr.test)} test)" for sr in readers))

        # shared AI drafts for every feedback report, stored as the app's generate step does
        fb_rows = {r["id"]: r for sr in readers for r in sr.feedback}
        fb_list = list(fb_rows.values())
        t0 = time.perf_counter()
        outs = drafter.draft(fb_list, [None] * len(fb_list))
        store.add_generations({"report_id": r["id"], "model": "c2f-shared", "text": o.text,
                               "style": "default", "flags": o.flags, "latency_ms": o.latency_ms}
                              for r, o in zip(fb_list, outs))
        log(f"[{kind}] shared drafts for {len(fb_list)} feedback reports in "
            f"{time.perf_counter() - t0:.1f} s")

        # shared model on the test parts (computed once; it does not change)
        test_rows, test_owner = [], []
        for sr in readers:
            test_rows += sr.test
            test_owner += [sr.name] * len(sr.test)
        shared_out = drafter.draft(test_rows, [None] * len(test_rows))
        by_reader = {sr.name: sr for sr in readers}
        shared_scores = {}
        k = 0
        for sr in readers:
            preds = [o.text for o in shared_out[k:k + len(sr.test)]]
            shared_scores[sr.name] = _score(preds, [sr.target(r) for r in sr.test])
            k += len(sr.test)

        curve: list[dict] = []
        nightly_runs: list[dict] = []
        nights: list[dict] = []
        given = {sr.name: 0 for sr in readers}
        train = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                            learning_rate=cfg.learning_rate, lora_layers=cfg.lora_layers,
                            threads=cfg.threads, progress=False)  # the nightly's max_length
        for point in sorted(cfg.points):
            # feedback through the app's save path
            t0 = time.perf_counter()
            n_new = 0
            for sr in readers:
                user = users[sr.name]
                for rep in sr.feedback[given[sr.name]:point]:
                    case = store.case(rep["id"])
                    target = sr.target(rep)
                    annotate.submit_rating(store, user, case, annotate.Rating(
                        rating=rating_by_similarity(case.ai_text, target), edited_text=target,
                        time_spent_ms=30_000), client_token=f"sim:{sr.name}:{rep['id']}")
                    n_new += 1
                given[sr.name] = min(point, len(sr.feedback))
            log(f"[{kind}] {point} items/reader: {n_new} feedback rows stored in "
                f"{time.perf_counter() - t0:.1f} s")
            method = "dpo" if (cfg.lora and point in cfg.lora_points) else "memory"
            ncfg = NightlyConfig(method=method, force=True, min_pairs=4,
                                 min_heldout_reports=cfg.min_heldout,
                                 max_pairs=cfg.max_pairs, eval_max_reports=cfg.eval_reports,
                                 model_path=cfg.model, train=train,  # pre-drafts included
                                 draft=draft_cfg, readers=[sr.name for sr in readers])
            report = run_nightly(store, ncfg, generator=generator, progress=False)
            nights.append({"point": point, "method": method, "wall_s": report.wall_s,
                           "readers": sum(o.status == "succeeded" for o in report.outcomes),
                           "promoted": sum(o.promoted for o in report.outcomes),
                           "train_pairs": sum(o.n_train_pairs for o in report.outcomes)})
            for o in report.outcomes:
                nightly_runs.append({"point": point, "method": method, "reader": o.reader,
                                     "status": o.status, "promoted": o.promoted,
                                     "reason": o.reason, "version": o.version,
                                     "n_train_pairs": o.n_train_pairs, "train_s": o.train_s,
                                     "pairs_per_s": o.pairs_per_s, "wall_s": o.wall_s,
                                     "phases_s": o.phases_s,
                                     "heldout": {k: o.metrics.get(k) for k in
                                                 ("n", "rougeL", "label_f1", "pref_acc",
                                                  "critical_recall")},
                                     "heldout_baseline": {k: o.baseline.get(k) for k in
                                                          ("rougeL", "label_f1", "pref_acc",
                                                           "critical_recall")}})
            log(f"[{kind}] nightly ({method}) at {point}: {report.wall_s:.0f} s; " + "; ".join(
                f"{o.reader} v{o.version} {'promoted' if o.promoted else o.status} "
                f"({o.n_train_pairs} pairs; {o.phases_s})" for o in report.outcomes))
            # the readers' active adapters on their test parts, all readers in one mixed batch
            avs = [active_adapter(store, name) for name in test_owner]
            t0 = time.perf_counter()
            outs = drafter.draft(test_rows, avs)
            last_avs, last_outs = avs, outs
            log(f"[{kind}] test drafts with the active adapters ({len(test_rows)} rows, "
                f"{sum(bool(a and a.has_lora) for a in avs)} with LoRA) in "
                f"{time.perf_counter() - t0:.1f} s")
            k = 0
            for sr in readers:
                preds = [o.text for o in outs[k:k + len(sr.test)]]
                s = _score(preds, [sr.target(r) for r in sr.test])
                av = avs[k] if sr.test else None
                curve.append({"point": point, "items": given[sr.name], "reader": sr.name,
                              "version": av.version if av else None,
                              "method": av.method if av else None,
                              "has_lora": bool(av and av.has_lora), **s,
                              "shared_rougeL": shared_scores[sr.name]["rougeL"],
                              "shared_label_f1": shared_scores[sr.name]["label_f1"]})
                k += len(sr.test)

        # ablation on each reader's newest version (the last night's candidate, even if rejected)
        ablation = {}
        newest: list[AdapterVersion | None] = []
        for name in test_owner:
            rows_v = [v for v in store.adapters_of(store.get_reader(name).id)]
            if rows_v:
                last = rows_v[-1]
                newest.append(AdapterVersion(name, last["reader_id"], last["version"],
                                             Path(last["path"]), last["status"], last["method"]))
            else:
                newest.append(None)
        variants = {"memory_only": dict(use_lora=False, use_memory=True),
                    "lora_only": dict(use_lora=True, use_memory=False),
                    "both": dict(use_lora=True, use_memory=True)}
        texts = {"shared": [o.text for o in shared_out]}
        for vname, kw in variants.items():
            if vname != "memory_only" and not any(v is not None and v.has_lora for v in newest):
                continue
            t0 = time.perf_counter()
            if vname == "both":
                # rows whose newest version is the active one were drafted just above (same
                # drafter, same version, same switches): reuse them; draft only the others
                same = [a is not None and b is not None and (a.version == b.version) or
                        (a is None and b is None) for a, b in zip(last_avs, newest)]
                todo = [i for i, ok in enumerate(same) if not ok]
                redo = drafter.draft([test_rows[i] for i in todo], [newest[i] for i in todo],
                                     **kw) if todo else []
                outs = list(last_outs)
                for i, o in zip(todo, redo):
                    outs[i] = o
            else:
                outs = drafter.draft(test_rows, newest, **kw)
            log(f"[{kind}] ablation {vname}: {time.perf_counter() - t0:.1f} s")
            texts[vname] = [o.text for o in outs]
            k = 0
            for sr in readers:
                preds = [o.text for o in outs[k:k + len(sr.test)]]
                ablation.setdefault(sr.name, {"shared": shared_scores[sr.name]})[vname] = \
                    _score(preds, [sr.target(r) for r in sr.test])
                k += len(sr.test)

        # Control: the shared model writing every row. A reader's adapter always writes, the
        # shared model only where the neighbours disagree (llm="auto"): this arm has the
        # writing without any reader's LoRA or memory.
        outs = drafter.draft(test_rows, [None] * len(test_rows), llm="always")
        texts["shared_model_writes"] = [o.text for o in outs]
        k = 0
        for sr in readers:
            ablation.setdefault(sr.name, {"shared": shared_scores[sr.name]})[
                "shared_model_writes"] = _score([o.text for o in outs[k:k + len(sr.test)]],
                                                [sr.target(r) for r in sr.test])
            k += len(sr.test)
        near = near_neighbour_split(readers, newest, test_owner, test_rows)
        split_scores = {}
        for part in ("near", "far"):
            per = {}
            for vname, preds in texts.items():
                k = 0
                for sr in readers:
                    idx = [k + j for j in range(len(sr.test)) if near[k + j] == (part == "near")]
                    if idx:
                        per.setdefault(sr.name, {})[vname] = _score(
                            [preds[i] for i in idx], [sr.target(sr.test[i - k]) for i in idx])
                        per[sr.name]["n"] = len(idx)
                    k += len(sr.test)
            split_scores[part] = {
                "reports": sum(near) if part == "near" else len(near) - sum(near),
                "macro": {v: {m: _macro([r.get(v, {}).get(m) for r in per.values()])
                              for m in ("rougeL", "label_f1")} for v in texts},
                "readers": per}
        same = {f"{a}=={b}": sum(x == y for x, y in zip(texts[a], texts[b])) for a, b in
                (("memory_only", "lora_only"), ("lora_only", "both"), ("shared", "lora_only"),
                 ("memory_only", "both"), ("shared_model_writes", "lora_only"),
                 ("shared", "shared_model_writes")) if a in texts and b in texts}
        log(f"[{kind}] near-neighbour split (cosine >= {NEAR}): {sum(near)} near, "
            f"{len(near) - sum(near)} far; identical texts between variants: {same}")

        final = [c for c in curve if c["point"] == max(cfg.points)]
        # feedback items behind each version: the items given when its night ran
        built_at = {(r["reader"], r["version"]): r["point"] for r in nightly_runs
                    if r["version"] is not None}
        per_reader = []
        for c in final:
            sr = by_reader[c["reader"]]
            active_point = built_at.get((c["reader"], c["version"]))
            # the fewest feedback items after which the served adapter met the goal
            margin = 10.0 if kind == "styles" else 0.0
            reached = [x["items"] for x in curve if x["reader"] == c["reader"] and
                       x["rougeL"] is not None and x["shared_rougeL"] is not None and
                       x["version"] is not None and x["rougeL"] >= x["shared_rougeL"] + margin]
            per_reader.append({
                "reader": c["reader"], "label": sr.label, "items": c["items"],
                "active_items": (min(active_point, len(sr.feedback)) if active_point is not None
                                 else 0),
                "items_to_goal": min(reached) if reached else None,
                "test": len(sr.test), "version": c["version"], "method": c["method"],
                "has_lora": c["has_lora"],
                "shared_rougeL": c["shared_rougeL"], "personal_rougeL": c["rougeL"],
                "shared_label_f1": c["shared_label_f1"], "personal_label_f1": c["label_f1"]})
        lora_runs = [r for r in nightly_runs if r["method"] == "dpo" and r["status"] ==
                     "succeeded"]
        leaks = leak_check(store, readers)
        log(f"[{kind}] leak check (must be all 0): {leaks}")
        results = {
            "bench": kind, "config": {k: (str(v) if isinstance(v, Path) else v)
                                      for k, v in cfg.__dict__.items()},
            "readers": per_reader,
            "macro": {
                "shared_rougeL": _macro([r["shared_rougeL"] for r in per_reader]),
                "personal_rougeL": _macro([r["personal_rougeL"] for r in per_reader]),
                "shared_label_f1": _macro([r["shared_label_f1"] for r in per_reader]),
                "personal_label_f1": _macro([r["personal_label_f1"] for r in per_reader]),
            },
            "leak_check": leaks,
            "test_uids": {sr.name: [r["external_id"] for r in sr.test] for sr in readers},
            "ablation": ablation,
            "ablation_split": split_scores,
            "ablation_identical_texts": same,
            "ablation_texts": texts,
            "ablation_macro": {v: {m: _macro([a.get(v, {}).get(m) for a in ablation.values()])
                                   for m in ("rougeL", "label_f1")}
                               for v in ("shared", "shared_model_writes", "memory_only",
                                         "lora_only", "both")},
            "curve": curve,
            "nightly": nightly_runs,
            "nights": nights,
            "lora_training": {
                "runs": len(lora_runs),
                "pairs": sum(r["n_train_pairs"] for r in lora_runs),
                "train_s": sum(r["train_s"] for r in lora_runs),
                "wall_s": sum(r["wall_s"] for r in lora_runs),
                "pairs_per_s": (sum(r["n_train_pairs"] * cfg.epochs for r in lora_runs) /
                                sum(r["train_s"] for r in lora_runs)) if lora_runs and
                sum(r["train_s"] for r in lora_runs) else None,
            },
            "wall_s": time.perf_counter() - t_start,
        }
        (workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        write_curve(results, workdir)
        return results
    finally:
        if store is not None:
            store.close()


# ---------------------------------------------------------------------------------------------
# output: tables and plots
# ---------------------------------------------------------------------------------------------


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    """Per-reader and macro tables, the ablation and the nightly cost, as markdown."""
    lines = [f"### {results['bench']}", "",
             "| reader | group/style | feedback items (given / in active version / to goal) | "
             "test | active version | ROUGE-L shared | ROUGE-L personal | label F1 shared | "
             "label F1 personal |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results["readers"]:
        if r["version"]:
            kind = "LoRA+memory" if r["has_lora"] else "memory only, no LoRA"
            ver = f"v{r['version']} {r.get('method') or ''} ({kind})"
        else:
            ver = "none (shared model)"
        goal = r.get("items_to_goal")
        lines.append(f"| {r['reader']} | {r['label']} | {r['items']} / "
                     f"{r.get('active_items', '-')} / {goal if goal is not None else 'not met'} | "
                     f"{r['test']} | {ver} | "
                     f"{_f(r['shared_rougeL'])} | {_f(r['personal_rougeL'])} | "
                     f"{_f(r['shared_label_f1'])} | {_f(r['personal_label_f1'])} |")
    m = results["macro"]
    lines.append(f"| **macro** | | | | | **{_f(m['shared_rougeL'])}** | "
                 f"**{_f(m['personal_rougeL'])}** | **{_f(m['shared_label_f1'])}** | "
                 f"**{_f(m['personal_label_f1'])}** |")
    lines += ["", "Ablation (each reader's newest version; macro over readers):", "",
              "| variant | ROUGE-L | label F1 |", "|---|---:|---:|"]
    for v, s in results["ablation_macro"].items():
        lines.append(f"| {v} | {_f(s['rougeL'])} | {_f(s['label_f1'])} |")
    if results.get("ablation_split"):
        lines += ["", f"Split by whether the reader's memory holds a near neighbour (TF-IDF "
                      f"cosine >= {NEAR}); macro over readers, ROUGE-L / label F1:", "",
                  "| variant | near | far |", "|---|---:|---:|"]
        sp = results["ablation_split"]
        for v in sp["near"]["macro"]:
            cells = [f"{_f(sp[p]['macro'][v]['rougeL'])} / {_f(sp[p]['macro'][v]['label_f1'])}"
                     for p in ("near", "far")]
            lines.append(f"| {v} | {cells[0]} | {cells[1]} |")
        lines.append(f"| reports | {sp['near']['reports']} | {sp['far']['reports']} |")
        lines += ["", f"Identical texts between variants: {results['ablation_identical_texts']}"]
    lt = results["lora_training"]
    lines += ["", f"LoRA (DPO) nights: {lt['runs']} reader runs, {lt['pairs']} pairs, "
              f"training {_f(lt['train_s'], 0)} s ({_f(lt['pairs_per_s'], 2)} pairs/s), "
              f"wall {_f(lt['wall_s'], 0)} s; whole benchmark {_f(results['wall_s'], 0)} s."]
    if results.get("nights"):
        lines += ["", "| night (items/reader) | method | readers run | promoted | train pairs | "
                  "wall s |", "|---:|---|---:|---:|---:|---:|"]
        for n in results["nights"]:
            lines.append(f"| {n['point']} | {n['method']} | {n['readers']} | {n['promoted']} | "
                         f"{n['train_pairs'] if n['method'] != 'memory' else '-'} | "
                         f"{_f(n['wall_s'], 0)} |")
    if "leak_check" in results:
        lines += ["", "Leak check (test reports reaching feedback / adapter memory / the nightly "
                  f"held-out slice; must be 0): {results['leak_check']}."]
    return "\n".join(lines)


def curve_spec(results: dict) -> FigureSpec:
    """The learning curve (macro ROUGE-L over readers vs mean feedback items per reader), one
    spec drawn with plotly (``learning_curve.html``) and as SVG (``learning_curve.svg``)."""
    curve = results["curve"]
    points = sorted({c["point"] for c in curve})
    personal = [_macro([c["rougeL"] for c in curve if c["point"] == p]) for p in points]
    shared = [_macro([c["shared_rougeL"] for c in curve if c["point"] == p]) for p in points]
    items = tuple(_macro([c["items"] for c in curve if c["point"] == p]) or 0.0 for p in points)
    values = [v for v in personal + shared if v is not None] or [0.0, 100.0]

    def series(name: str, ys: list, color: str) -> Series:
        return Series(name, tuple(float("nan") if y is None else y for y in ys), color=color,
                      x=items)

    return FigureSpec("learning_curve", "lines", f"ROUGE-L vs feedback items ({results['bench']})",
                      (), (series("personalised (active adapter)", personal, "#175cd3"),
                           series("shared model", shared, "#b42318")),
                      x_range=(max(0.0, min(values) - 5), min(100.0, max(values) + 5)),
                      percent=False, x_title="feedback items per reader (mean)",
                      y_title="ROUGE-L (test part, macro over readers)")


def write_curve(results: dict, folder: Path) -> None:
    """Write the learning curve's one spec as plotly HTML and as a plain SVG."""
    spec = curve_spec(results)
    plotly_figure(spec).write_html(folder / "learning_curve.html", include_plotlyjs="cdn")
    (folder / "learning_curve.svg").write_text(svg(spec))


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(p) -> None:
    """Options of ``bench/personalization.py``."""
    p.add_argument("--bench", choices=["styles", "real", "both"], default="both")
    p.add_argument("--csv", default=str(IU_CSV), help="IU X-ray reports.csv")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--points", default="10,25,50,100,200",
                   help="cumulative feedback items per reader after which the nightly job runs")
    p.add_argument("--lora-points", default="200",
                   help="points whose nightly trains LoRA (DPO); others are memory-only")
    p.add_argument("--test", type=int, default=24, help="test reports per reader (at most)")
    p.add_argument("--real-readers", type=int, default=8)
    p.add_argument("--style-readers", type=int, default=4)
    p.add_argument("--max-pairs", type=int, default=64)
    p.add_argument("--sim-epochs", type=float, default=1.0)
    p.add_argument("--sim-batch-size", type=int, default=4)
    p.add_argument("--sim-lora-layers", type=int, default=8)
    p.add_argument("--sim-threads", type=int)
    p.add_argument("--no-lora", action="store_true", help="memory-only adapters (no DPO)")
    p.add_argument("--memory-bonus", type=float, default=0.3,
                   help="similarity bonus of the reader's own memory in retrieval")
    p.add_argument("--eval-reports", type=int, default=16,
                   help="held-out reports per reader the nightly gate evaluates on (at most)")
    p.add_argument("--min-heldout", type=int, default=10,
                   help="the nightly gate never promotes with fewer held-out reports")
    p.add_argument("--model", dest="sim_model", help="base checkpoint")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 points, 3 readers, 8 test reports, 8 pairs")


def config_from_args(args) -> SimConfig:
    cfg = SimConfig(points=[int(x) for x in args.points.split(",")],
                    lora_points=[int(x) for x in args.lora_points.split(",") if x],
                    test_size=args.test, real_readers=args.real_readers,
                    style_readers=args.style_readers, max_pairs=args.max_pairs,
                    epochs=args.sim_epochs, batch_size=args.sim_batch_size,
                    lora_layers=args.sim_lora_layers or None, threads=args.sim_threads,
                    csv=Path(args.csv), out=Path(args.out), model=args.sim_model,
                    lora=not args.no_lora, memory_bonus=args.memory_bonus,
                    eval_reports=getattr(args, "eval_reports", 16),
                    min_heldout=getattr(args, "min_heldout", 10))
    if args.quick:
        cfg.points, cfg.lora_points = [10, 20], [20]
        cfg.test_size, cfg.real_readers, cfg.style_readers, cfg.max_pairs = 8, 3, 4, 8
    return cfg


def main(args) -> int:
    cfg = config_from_args(args)
    if not Path(cfg.csv).is_file():
        print(f"error: {cfg.csv} not found (the IU X-ray reports CSV)")
        return 2
    kinds = ["styles", "real"] if args.bench == "both" else [args.bench]
    generator = None
    if cfg.lora:

        generator = load_generator(ModelSpec(path=cfg.model or settings().model_path, device="cpu"))
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    md = []
    for kind in kinds:
        res = run_bench(kind, cfg, generator=generator)
        md.append(markdown(res))
        print(md[-1])
    (Path(cfg.out) / "personalization.md").write_text("\n\n".join(md) + "\n")
    return 0
