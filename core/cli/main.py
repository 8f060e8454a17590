"""python -m core <command>: everything Impressionist does, from the shell.

Examples:

    python -m core setup                      # migrate, prepare the embedded model, demo data
    python -m core import ../shared/data/iu_xray/reports.csv
    python -m core import reports/ --format mimic-cxr
    python -m core import export.csv --format csv --map findings=FINDINGS_TEXT
    python -m core generate --limit 200
    echo 'a-long-password' | python -m core users add dr_lee --role radiologist
    python -m core users list
    python -m core --db trial.duckdb users list   # another database (its files: trial-data/)

Import formats (import --format; auto picks one from the file name and header):
    iu-xray        IU X-ray / Open-i CSV: uid, MeSH, Problems, image, indication, comparison,
                   findings, impression
    mimic-cxr      a MIMIC-CXR report .txt (FINDINGS:, IMPRESSION: ... sections) or a folder
    chexpert-plus  CheXpert Plus CSV, one row per image (section_findings, section_impression)
    csv, jsonl     any CSV / JSON Lines; name your columns with --map findings=COLUMN ...

Every command works on the database given by --db (default: $IMPRESSIONIST_DB, else
data/impressionist.duckdb). What belongs to a database (its adapters, the nightly lock, the
retrieval cache, logs) lives beside it: in its folder for impressionist.duckdb, else in
NAME-data/ next to NAME.duckdb. Add --help after a command for its options.

Exit status: 0 on success, 2 on bad input (the message names the file, row and field, or the
option), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from pathlib import Path

from core.config import settings
from core.errors import ValidationError

DEMO_USERS = (
    ("radiologist", "radiologist", "demo-radiologist"),
    ("radiologist2", "radiologist", "demo-radiologist2"),
    ("coordinator", "coordinator", "demo-coordinator"),
    ("admin", "admin", "demo-admin"),
)


def _store(args):
    """The database of ``--db`` (main() has made it the configured one), migrated; main()
    closes it when the command ends, also on an error (an open DuckDB handle at exit prints
    ``nanobind: leaked ...`` and can abort the interpreter)."""
    from core.store.database import Store

    store = Store(settings().db_path)
    args.cleanup.callback(store.close)
    store.migrate()
    return store


def _existing_store(args):
    """:func:`_store` for commands that need data already there: a missing file is bad input
    (instead of a new, empty database created by a typo in --db)."""
    from core.errors import ValidationError

    db = settings().db_path
    if not db.is_file():
        raise ValidationError(f"database {db} does not exist: import reports first "
                              f"(python -m core --db {db} import FILE)")
    return _store(args)


def _cli_user():
    """Whoever can run the CLI can open the database file: an admin named "cli"."""
    from datetime import datetime, timezone

    from core.accounts.auth import User

    return User(0, "cli", "admin", datetime.now(timezone.utc))


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    """Rows as left-aligned columns under a header (plain text, for the terminal)."""
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValidationError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. findings=FINDINGS")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# -- commands -------------------------------------------------------------------------------------
def cmd_import(args) -> int:
    from core.ingest.reports import import_file

    store = _store(args)
    result = import_file(store, args.file, fmt=args.format, mapping=_mapping(args.map),
                         require_impression=not args.allow_missing_impression, actor="cli",
                         skip_empty_findings=args.skip_empty_findings,
                         allow_duplicates=args.allow_duplicates)
    print(result.summary())
    return 0


def _generator(model: str | None, backend: str | None = None):
    """The configured model on the configured backend (``--backend``/``IMPRESSIONIST_BACKEND``)."""
    from core.generation.backends import load_backend
    from core.errors import ValidationError
    from core.generation.models import ModelNotPrepared

    path = Path(model) if model else settings().model_path
    if not (path / "config.json").exists():
        if model:
            raise ValidationError(f"--model {model}: no Hugging Face checkpoint there "
                                  f"(config.json is missing)")
        raise ModelNotPrepared(f"no model at {path}: run `make setup` (or pass --model PATH)")
    return load_backend(backend or settings().backend, path)


def _pipeline(store, config, model: str | None = None, backend: str | None = None,
              needs_model: bool = False):
    """The generation pipeline of ``store``, with the model loaded only when it can draft.

    Retrieval and vote (``--llm off``, the default) never call the model while there are
    reports to retrieve from, so it is not loaded then (loading takes 20-30 s on a CPU);
    ``needs_model`` (--llm auto/always, --model) loads it.
    """
    from core.generation import pipeline as generate
    from core.generation.retrieval import RetrievalError

    pipeline = None
    if not needs_model:
        with contextlib.suppress(RetrievalError):  # nothing to retrieve from: the model writes
            pipeline = generate.pipeline_for(store, None, config)
    if pipeline is None:
        pipeline = generate.pipeline_for(store, _generator(model, backend), config)
    if pipeline.index is None:
        print("warning: no reports with impressions to retrieve from (import some first); "
              "the model writes alone and every row is flagged for review", file=sys.stderr)
    return pipeline


def _read_cases(path: str) -> list[dict]:
    """The ``generate --in`` CSV, checked (file, encoding, columns, blank cells) before any
    model loads."""
    from core.errors import ValidationError
    from core.generation.pipeline import GenerationError, read_reports_csv

    try:
        return read_reports_csv(path)
    except GenerationError as exc:
        raise ValidationError(str(exc)) from None
    except UnicodeDecodeError as exc:
        data = Path(path).read_bytes()
        try:
            data.decode("utf-8-sig")
        except UnicodeDecodeError as whole:  # the reader decodes in chunks: locate it in the file
            exc = whole
        line = data[:exc.start].count(b"\n") + 1
        raise ValidationError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); save the "
            f"file as UTF-8 (in Excel: CSV UTF-8)") from None


def cmd_generate(args) -> int:
    """Fill the queue (stored impressions), or write impressions for a CSV (--in/--out)."""
    from tqdm.auto import tqdm

    from core.generation import pipeline as generate
    from core.errors import ValidationError

    config = generate.C2FConfig(llm=args.llm)
    cases = None
    if args.inp or args.out:
        if not (args.inp and args.out):
            raise ValidationError("--in and --out go together")
        cases = _read_cases(args.inp)
    store = _existing_store(args)
    if args.reader:  # the reader's own adapter drafts: the model is needed
        if cases is None:
            raise ValidationError("--reader goes with --in/--out (the queue is filled for "
                                  "everyone; the nightly job pre-drafts each reader's cases)")
        return generate.generate_csv(args.inp, args.out,
                                     generator=_generator(args.model, args.backend),
                                     style=args.style, reader=args.reader,
                                     batch_size=args.batch_size, store=store, config=config)
    if cases is None and not store.reports_without_generation(style=args.style, limit=1):
        print(f"generated 0 impressions ({args.style}): every report has one")
        return 0
    pipeline = _pipeline(store, config, args.model, args.backend,
                         needs_model=args.llm != "off" or bool(args.model))
    if cases is None:
        n = generate.fill_missing(store, pipeline.generator, limit=args.limit,
                                  batch_size=args.batch_size, style=args.style,
                                  pipeline=pipeline)
        print(f"generated {n} impressions ({args.style})")
        return 0
    outputs: list = []
    with tqdm(total=len(cases), desc="generate", unit="report", file=sys.stderr) as bar:
        for start in range(0, len(cases), 64):
            part = cases[start:start + 64]
            outputs += pipeline.generate(part, style=args.style, batch_size=args.batch_size)
            bar.update(len(part))
    generate.write_predictions_csv(args.out, cases, outputs, args.style)
    flagged = sum(bool(o.flags.get("needs_review")) for o in outputs)
    print(f"wrote {len(outputs)} impressions ({args.style}) to {args.out}; {flagged} flagged "
          f"for review")
    return 0


def cmd_users(args) -> int:
    from core.accounts import admin
    from core.accounts import auth

    store = _store(args)
    if args.users_cmd == "add":
        password = sys.stdin.readline().rstrip("\n")
        reader = auth.create_user(store, args.name, args.role, password, actor="cli")
        print(f"added {reader.username} ({reader.role})")
    elif args.users_cmd == "list":
        print(_table([(r.username, r.role, "active" if r.active else "disabled")
                      for r in store.list_readers()], ("user", "role", "account")))
    elif args.users_cmd in ("disable", "enable"):
        # the Admin page's path: an unknown name is an error, and the change is audited
        admin.set_user_active(store, _cli_user(), args.name, args.users_cmd == "enable")
        print(f"{args.users_cmd}d {args.name}")
    return 0


def _not_a_demo_database(store) -> str | None:
    """Why demo data must stay out of this database (None: it is new or a demo database).

    A department's database holds reports from other sources than the demo, or accounts other
    than the demo ones: demo reports would mix with its data and demo accounts, with published
    passwords, would open it to anyone.
    """
    from core.learning.sft import SHARED_READER

    real = store.count_reports() - len(store.reports(source="demo"))
    people = [r.username for r in store.list_readers()
              if r.username not in {n for n, _, _ in DEMO_USERS} | {SHARED_READER}]
    if real:
        return f"{store.path} holds {real:,} reports that are not demo reports"
    if people:
        return f"{store.path} has accounts of its own ({', '.join(people[:3])}...)"
    return None


def _write_demo(store, n_reports: int) -> int:
    """The demo accounts and ``n_reports`` synthetic reports (idempotent); returns how many
    reports are new."""
    from core.accounts import auth
    from core.ingest.demo import synthetic_reports
    from core.errors import StoreError

    existing = {r.username for r in store.list_readers()}
    for name, role, password in DEMO_USERS:
        if name not in existing:
            try:
                auth.create_user(store, name, role, password, actor="demo", check_rules=False)
            except StoreError:
                pass
    imported, _ = store.import_reports(synthetic_reports(n_reports, seed=0), file="demo",
                                       fmt="demo", actor="demo")
    print(f"demo data: {imported} new synthetic reports, accounts: "
          + ", ".join(f"{n}/{p}" for n, _, p in DEMO_USERS))
    return imported


def _draft_demo(store, limit: int, model: str | None = None) -> None:
    """AI impressions (retrieval and vote; the model drafts with --model) for at most ``limit``
    demo reports that have none yet."""
    from core.generation import pipeline as generate

    pipeline = _pipeline(store, generate.C2FConfig(), model, needs_model=bool(model))
    n = generate.fill_missing(store, pipeline.generator, limit=limit, batch_size=8,
                              pipeline=pipeline)
    print(f"generated {n} AI impressions for the demo queue")


def cmd_demo(args) -> int:
    """Create the demo accounts and demo reports (idempotent: existing data is kept), only in a
    new or demo database."""
    from core.errors import ValidationError

    store = _store(args)
    why = _not_a_demo_database(store)
    if why:
        raise ValidationError(f"{why}: demo data goes only into a new or demo database "
                              f"(python -m core --db demo.duckdb demo)")
    _write_demo(store, args.reports)
    if args.generate:
        _draft_demo(store, args.reports, args.model)
    return 0


def cmd_prepare_model(args) -> int:
    from core.generation.models import prepare_default_model

    path = prepare_default_model(dest=args.dest or settings().model_path, force=args.force)
    print(f"embedded model ready at {path}")
    return 0


def cmd_setup(args) -> int:
    """Migrate the database, prepare the embedded model, and (in a new or demo database) write
    the demo data and draft at most --limit of its impressions; quick when run again."""
    cmd_prepare_model(argparse.Namespace(dest=None, force=False))
    store = _store(args)
    print(f"database {store.path} at schema version {store.schema_version()}")
    why = _not_a_demo_database(store)
    if why:
        print(f"no demo data: {why} (drafts: python -m core generate --limit N)")
        return 0
    _write_demo(store, args.reports)
    _draft_demo(store, args.limit)
    return 0


def _os_actor(args) -> str:
    """Who runs a backup or restore, for the audit log: ``--actor``, else the OS user."""
    import getpass

    if args.actor:
        return args.actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): the uid still names someone
        return f"uid:{os.getuid()}"


def cmd_backup(args) -> int:
    store = _store(args)
    counts = store.backup(args.dest)
    store.audit(_os_actor(args), "backup", {"to": Path(args.dest).name, **counts})
    print(f"backup written to {args.dest}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return 0


def cmd_restore(args) -> int:
    """Restore a backup (checked completely first). The live database is never opened, so a
    good backup also restores over a damaged one: no ``_store`` (which migrates)."""
    from core.store.database import Store

    store = Store(settings().db_path)
    args.cleanup.callback(store.close)
    result = store.restore(args.src, actor=_os_actor(args))
    print(f"restored {args.src}: " + ", ".join(f"{v:,} {k}" for k, v in result.counts.items())
          + (f" (previous database kept as {result.kept_as})" if result.kept_as else ""))
    return 0


def cmd_study(args) -> int:
    """Human evaluation studies: create, assign, status, pause/resume, extend, close, report,
    export (see core.studies.study)."""
    from datetime import datetime, timezone

    from core.studies import study
    from core.accounts.auth import User, require
    from core.errors import NotFound, ValidationError

    store = _store(args)
    if args.as_user:
        try:
            reader = store.get_reader(args.as_user)
        except NotFound:
            raise ValidationError(f"--as {args.as_user!r}: no such user") from None
        user = require(User(reader.id, reader.username, reader.role,
                            datetime.now(timezone.utc)), "coordinator", "admin")
    else:
        user = _cli_user()
    return _study_verb(args, store, user, study)


def _texts_with_progress(args, make, chunk: int = 32):
    """``make_texts`` that makes texts ``chunk`` reports at a time under one tqdm bar (stderr)
    over every arm, instead of the model's own bar per call."""
    from tqdm.auto import tqdm

    bar = args.cleanup.enter_context(tqdm(desc="study texts", unit="text", file=sys.stderr))

    def made(reports: list[dict], arm: str) -> list:
        out: list = []
        bar.set_postfix(arm=arm, refresh=False)
        for start in range(0, len(reports), chunk):
            part = reports[start:start + chunk]
            out += list(make(part, arm))
            bar.update(len(part))
        return out

    made.model_name = make.model_name  # type: ignore[attr-defined]
    return made


def _study_verb(args, store, user, study) -> int:
    from core.errors import ValidationError

    split = lambda text: [x.strip() for x in (text or "").split(",") if x.strip()]  # noqa: E731
    cmd = args.study_cmd
    if cmd == "create":
        questions = None if not (args.question or args.no_default_questions) else (
            ([] if args.no_default_questions else list(study.DEFAULT_QUESTIONS))
            + list(args.question or []))
        guideline = (Path(args.guideline_file).read_text(encoding="utf-8")
                     if args.guideline_file else study.DEFAULT_GUIDELINE)
        design = study.StudyDesign(
            name=args.name, arms=split(args.arms), n_items=args.n, seed=args.seed,
            raters=split(args.raters), k=args.k, scale=args.scale, questions=questions,
            guideline=guideline, strata=split(args.strata), sources=split(args.sources) or None,
            external_source=args.external_source, typo_rate=args.typo_rate,
            model=args.from_model)
        model = (_texts_with_progress(args, study.model_text_maker(
            _generator(args.model), batch_size=args.batch_size, store=store))
                 if args.generate else None)
        # Style arms are rendered from stored base texts by rules; the model only runs with
        # --generate, for texts nobody has generated yet.
        study_id = study.create_study(store, user, design,
                                      make_texts=study.stored_style_maker(store, model))
        s = store.get_study(study_id)
        print(f"created study {study_id} ({s['status']}): {s['n_items']} items x "
              f"{len(s['arms'])} arms" + (f", {len(design.raters)} raters, k={design.k}"
                                          if design.raters else
                                          f"; assign raters with: python -m core study assign "
                                          f"{study_id} --raters A,B,C --k 2"))
    elif cmd == "assign":
        n = study.assign_raters(store, user, args.id, split(args.raters), args.k)
        print(f"study {args.id}: {n} tasks assigned")
    elif cmd == "list":
        for s in study.list_studies(store, user):
            print(f"{s['id']:>4}  {s['status']:8} {s['n_done']:>6}/{s['n_tasks']:<6} "
                  f"{s['name']}  [{', '.join(s['arms'])}]")
    elif cmd == "status":
        p = study.progress(store, user, args.id)
        print(f"study {p.study_id}: {p.name} [{p.status}] k={p.k} items={p.n_items} "
              f"done {p.done}/{p.total} (alpha so far {p.alpha_so_far:.3f})")
        print(p.per_rater.to_string(index=False))
        print(p.per_arm.to_string(index=False))
    elif cmd in ("pause", "resume", "close"):
        if cmd == "close" and study.progress(store, user, args.id).done == 0:
            print(f"warning: study {args.id} has no ratings yet; once closed it takes no more "
                  f"ratings, and its results will be empty", file=sys.stderr)
        status = getattr(study, cmd)(store, user, args.id)
        print(f"study {args.id} is {status}")
    elif cmd == "extend":
        n = study.extend(store, user, args.id, split(args.raters), extra_k=args.extra_k)
        print(f"study {args.id}: {n} tasks for {', '.join(split(args.raters))}")
    elif cmd == "report":
        from core.studies.report import summary_text

        res = study.results(store, user, args.id, n_boot=args.n_boot,
                            metrics=split(args.metrics))
        print(summary_text(res))
        if args.html:
            study.export_html(store, user, args.id, args.html, res=res)
            print(f"wrote {args.html}")
    elif cmd == "export":
        fmt = (args.format or Path(args.out).suffix.lstrip(".")).lower()
        if fmt in ("csv", "parquet"):
            study.export_ratings(store, user, args.id, args.out, fmt=fmt)
            print(f"wrote {args.out}")
        elif fmt in ("jsonl", "trl"):
            n = study.export_preferences(store, user, args.id, args.out,
                                         min_margin=args.min_margin,
                                         conversational=not args.plain)
            print(f"wrote {n} preference pairs to {args.out}")
        elif fmt in ("html", "htm"):
            study.export_html(store, user, args.id, args.out, n_boot=args.n_boot,
                              metrics=split(args.metrics))
            print(f"wrote {args.out}")
        else:
            raise ValidationError(f"--format {fmt!r}: choose csv, parquet, jsonl or html")
    return 0


def cmd_pairs(args) -> int:
    """Export one radiologist's preference pairs as JSONL (TRL preference format)."""
    from core.learning.pairs import pairs_for_reader, write_jsonl

    store = _store(args)
    reader = store.get_reader(args.reader)
    pairs = pairs_for_reader(store, reader.id, heldout_fraction=args.heldout_fraction,
                             record_heldout=not args.no_record)
    n = write_jsonl(pairs.train, args.out)
    store.audit("cli", "export", {"what": "pairs", "reader": args.reader, "rows": n})
    print(f"{args.reader}: {pairs.summary()}")
    print(f"wrote {n} training pairs to {args.out}")
    if args.heldout_out:
        m = write_jsonl(pairs.heldout, args.heldout_out)
        print(f"wrote {m} held-out pairs to {args.heldout_out}")
    return 0


def cmd_nightly(args) -> int:
    """Train, evaluate and maybe promote each radiologist's adapter (safe while the app runs)."""
    import json as _json

    from core.learning import distributed
    from core.learning.nightly import NightlyConfig, follow, run_nightly
    from core.learning.train import TrainConfig

    # Under `accelerate launch` (several GPUs): rank 0 runs the job; the others only train.
    distributed.init()
    if not distributed.is_main():
        follow()
        distributed.finish()
        return 0
    store = _store(args)
    train = TrainConfig(method="grpo" if args.method == "grpo" else "dpo", epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.lr,
                        lora_layers=args.lora_layers, threads=args.threads)
    config = NightlyConfig(method=args.method, min_new_feedback=args.min_new_feedback,
                           min_pairs=args.min_pairs, max_pairs=args.max_pairs,
                           min_heldout_reports=args.min_heldout,
                           readers=args.readers.split(",") if args.readers else None,
                           force=args.force, refresh_per_reader=args.refresh,
                           model_path=args.model, train=train)
    try:
        report = run_nightly(store, config, progress=not args.quiet)
    finally:
        distributed.finish()
    print(report.summary())
    if args.json:
        from dataclasses import asdict

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(_json.dumps(asdict(report), indent=2, default=str))
    return 0 if all(o.status != "failed" for o in report.outcomes) else 1


def cmd_adapters(args) -> int:
    """List adapter versions; promote one; roll back to the previous one."""
    from core.adapters import registry as adapters

    store = _store(args)
    if args.adapters_cmd == "list":
        rows = adapters.list_versions(store, reader=args.reader)
        if not rows:
            print("no adapters yet (run `python -m core nightly`)")
            return 0
        table = []
        for r in rows:
            m = r.get("metrics") or {}
            rouge = f"{m['rougeL']:.1f}" if isinstance(m.get("rougeL"), (int, float)) else "-"
            table.append((r["reader"], f"v{r['version']}",
                          "ACTIVE" if r["state"] == "active" else r["state"],
                          r["method"] or "-", rouge, r["path"]))
        print(_table(table, ("reader", "version", "state", "method", "ROUGE-L", "path")))
    elif args.adapters_cmd == "promote":
        prev = adapters.promote(store, args.reader, args.version, actor="cli",
                                reason="promoted by hand")
        print(f"{args.reader}: v{args.version} is active (was "
              f"{'v' + str(prev) if prev else 'the shared model'})")
    elif args.adapters_cmd == "rollback":
        old, new = adapters.rollback(store, args.reader, args.to, actor="cli")
        print(f"{args.reader}: rolled back from v{old} to "
              f"{'v' + str(new) if new else 'the shared model'}")
    return 0


def cmd_feedback(args) -> int:
    """Import existing draft -> signed impression pairs as feedback."""
    from core.feedback.importing import import_feedback

    store = _store(args)
    result = import_feedback(store, args.file, actor="cli")
    print(result.summary())
    return 0


def cmd_simulate(args) -> int:
    """Run the personalization benchmarks end to end (see core/simulate.py)."""
    from core.simulate import main as simulate_main

    return simulate_main(args)


def cmd_evaluate(args) -> int:
    """Score predictions (uid,prediction) against references (uid,impression), joined by uid."""
    from core.evaluation.compare import evaluate_pairs, format_result, read_pairs, write_json

    pairs = read_pairs(args.pred, args.ref, pred_col=args.pred_col, ref_col=args.ref_col,
                       findings_col=None if args.findings_col == "" else args.findings_col)
    result = evaluate_pairs(pairs, with_bertscore=not args.no_bertscore)
    result.update({"pred_file": str(args.pred), "ref_file": str(args.ref)})
    print(f"{result['n']} predictions of {args.pred} scored against {args.ref}\n")
    print(format_result(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    return 0


def cmd_train_sft(args) -> int:
    """SFT of the shared base adapter on the store's train-split reports (core.learning.sft)."""
    from core.generation.pipeline import C2FConfig
    from core.learning.sft import run_sft
    from core.learning.train import SFTTrainConfig

    store = _store(args)
    try:
        config = SFTTrainConfig(epochs=args.epochs, max_steps=args.max_steps,
                                batch_size=args.batch_size, learning_rate=args.lr,
                                max_length=args.max_length, lora_r=args.lora_r,
                                lora_alpha=args.lora_alpha or 2 * args.lora_r,
                                lora_layers=args.lora_layers, dtype=args.dtype, seed=args.seed,
                                threads=args.threads, progress=not args.quiet,
                                max_minutes=args.max_minutes)
        run = run_sft(store, config, model_path=args.model, max_examples=args.max_examples,
                      shots=C2FConfig().shots if args.shots is None else args.shots,
                      eval_examples=args.eval_examples, source=args.source,
                      promote=not args.no_promote, out=args.out)
    finally:
        store.close()
    print(run.summary())
    return 0


# -- more command functions: helpers insert above this line, one function each --


# -- option types: a bad value is an argparse error (exit 2) before anything loads ------------
def _number(kind, test, what):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    return parse


_positive_int = _number(int, lambda v: v > 0, "a whole number > 0")
_nonnegative_int = _number(int, lambda v: v >= 0, "a whole number >= 0")
_steps = _number(int, lambda v: v > 0 or v == -1, "a whole number > 0, or -1 (no cap)")
_positive_float = _number(float, lambda v: v > 0, "> 0")
_nonnegative_float = _number(float, lambda v: v >= 0, ">= 0")
_fraction = _number(float, lambda v: 0 <= v <= 1, "between 0 and 1")


def _styles_help() -> str:
    from core.generation.styles import ALIASES, STYLES

    lines = ["audience styles (--style):"]
    lines += [textwrap.fill(text, 92, initial_indent=f"  {name:15}", subsequent_indent=" " * 17)
              for name, text in STYLES.items()]
    lines.append(textwrap.fill(", ".join(f"{a}={s}" for a, s in sorted(ALIASES.items()) if a),
                               92, initial_indent="  aliases:       ",
                               subsequent_indent=" " * 17))
    return "\n".join(lines)


def _feedback_help() -> str:
    from core.feedback.annotate import RATING_SCALE
    from core.feedback.importing import COLUMNS

    scale = ", ".join(f"{v} {label.lower()}" for v, label in RATING_SCALE.items())
    need = {"reader": "required: the username of a radiologist (or admin)",
            "uid": "required: a report in the database",
            "edited": "required: the impression the radiologist signed",
            "ai_text": "optional: the draft it replaced",
            "rating": f"optional: the draft rated relative to the original, "
                      f"{min(RATING_SCALE)}..{max(RATING_SCALE)}: {scale}",
            "source": "optional: the report source, when a uid is in several"}
    lines = [textwrap.fill(
        "Import existing feedback: each row is a radiologist's signed impression for a report, "
        "optionally with the draft it replaced and a rating. The whole file is checked first; "
        "nothing is written unless every row is valid. Columns (header names in any case; the "
        "first spelling present wins):", 92), ""]
    for key, names in COLUMNS.items():
        lines.append(f"  {' | '.join(names)}")
        lines.append(textwrap.fill(need[key], 92, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6))
    return "\n".join(lines)


def _style(text: str) -> str:
    from core.generation.styles import StyleError, resolve_style

    try:
        return resolve_style(text)
    except StyleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database file (default: $IMPRESSIONIST_DB or "
                                     "data/impressionist.duckdb); its adapters, locks, caches "
                                     "and logs live beside it")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import reports from a file or folder")
    p.add_argument("file", help="a CSV/JSONL file, or a folder of MIMIC-CXR report .txt files")
    p.add_argument("--format", default="auto",
                   choices=["auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl"],
                   help="auto (the default: told from the columns or the folder), iu-xray (the "
                        "IU X-ray/Open-i reports.csv: uid, findings, impression, indication, "
                        "comparison, MeSH ...), mimic-cxr (a folder of free-text reports with "
                        "FINDINGS:/IMPRESSION: sections), chexpert-plus (the CheXpert Plus CSV, one "
                        "row per image, section_* columns), csv or jsonl (any columns: name them "
                        "with --map)")
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="column mapping for generic CSV/JSONL (repeatable)")
    p.add_argument("--allow-missing-impression", action="store_true",
                   help="accept reports without an impression")
    p.add_argument("--skip-empty-findings", action="store_true",
                   help="leave out (and count) reports without findings instead of refusing "
                        "the file (about a third of MIMIC-CXR reports have none)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="import reports whose findings and impression were already imported "
                        "through another format (skipped and counted by default)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "generate", help="generate AI impressions",
        description=textwrap.fill(
            "Fill the annotation queue (stored AI impressions for reports that have none), or "
            "with --in/--out write impressions for the rows of a CSV. The model is loaded only "
            "when it drafts (--llm auto/always, --reader, --model).", 92),
        epilog=_styles_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=_positive_int, help="at most this many reports")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--model", help="local Hugging Face checkpoint (default: embedded model)")
    p.add_argument("--in", dest="inp", metavar="CSV",
                   help="UTF-8 CSV with columns uid, findings[, indication, comparison, author]")
    p.add_argument("--out", metavar="CSV",
                   help="CSV to write: uid, prediction, style, needs_review, flags")
    p.add_argument("--style", type=_style, default="default",
                   help="audience style (below): default, brief, bullets, comprehensive")
    p.add_argument("--reader", help="with --in: draft as this radiologist (their active adapter)")
    p.add_argument("--llm", choices=["off", "auto", "always"], default="auto",
                   help="when the model writes: auto (the default: where the retrieved "
                        "neighbours disagree, and always for --reader with an adapter of their "
                        "own), always (every impression, from the findings and the retrieved "
                        "draft) or off (retrieval and vote only, an ablation; the model is not "
                        "loaded)")
    p.add_argument("--backend", choices=["transformers", "vllm"],
                   help="generation backend (default: $IMPRESSIONIST_BACKEND or transformers; "
                        "vllm serves many radiologists' adapters in one batch on a GPU)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("users", help="manage users")
    us = p.add_subparsers(dest="users_cmd", required=True)
    a = us.add_parser("add", help="add a user; the password is read from stdin")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["radiologist", "coordinator", "admin"])
    us.add_parser("list", help="every account with role and whether it is active")
    d = us.add_parser("disable", help="an account that can no longer sign in (kept, audited)")
    d.add_argument("name")
    d = us.add_parser("enable", help="let a disabled account sign in again")
    d.add_argument("name")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("demo", help="demo accounts and synthetic reports (new or demo "
                                    "database only)")
    p.add_argument("--reports", type=_positive_int, default=60)
    p.add_argument("--generate", action="store_true",
                   help="also draft their AI impressions (retrieval and vote)")
    p.add_argument("--model", help="with --generate: let this checkpoint draft too")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare-model", help="convert the embedded GGUF model to safetensors")
    p.add_argument("--dest")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_model)

    p = sub.add_parser("backup", help="consistent copy of the database (safe while the app runs)")
    p.add_argument("dest", help="new backup file, e.g. backups/2026-11-23.duckdb")
    p.add_argument("--actor", help="who backs up, for the audit log (default: the OS user)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the database with a backup (checked first; "
                                       "the replaced one is kept as <db>.before-restore-<time>)")
    p.add_argument("src")
    p.add_argument("--actor", help="who restores, for the audit log (default: the OS user)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("study", help="human evaluation studies (blinded, multi-rater)")
    p.add_argument("--as", dest="as_user", metavar="USER",
                   help="act as this coordinator/admin (default: an admin named 'cli')")
    st = p.add_subparsers(dest="study_cmd", required=True)
    c = st.add_parser("create", help="sample reports, collect arm texts, blind, assign")
    c.add_argument("--name", required=True)
    c.add_argument("--arms", required=True,
                   help="comma list: original, base, adapter:NAME, style:brief|bullets|"
                        "comprehensive, typos[:RATE], external")
    c.add_argument("--n", type=_positive_int, required=True, help="number of reports (items)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--raters", help="comma list of radiologists (omit to assign later)")
    c.add_argument("--k", type=_positive_int, default=2, help="raters per unit")
    c.add_argument("--scale", default="absolute", choices=["absolute", "relative",
                                                           "acceptability"],
                   help="what raters answer: absolute (how good is it, -2..2), relative "
                        "(compared with the original, -2..2) or acceptability (could it be "
                        "signed, -1..1)")
    c.add_argument("--question", action="append", metavar="KEY:TEXT",
                   help="extra yes/no question (repeatable)")
    c.add_argument("--no-default-questions", action="store_true",
                   help="do not ask the four error dimensions")
    c.add_argument("--guideline-file", help="text file shown to raters")
    c.add_argument("--strata", default="normal,source")
    c.add_argument("--sources", help="comma list of report sources to sample from")
    c.add_argument("--external-source", help="source of the 'external' arm, e.g. chexpert-plus")
    c.add_argument("--typo-rate", type=_fraction, default=0.03)
    c.add_argument("--from-model", help="use only stored generations of this model")
    c.add_argument("--generate", action="store_true",
                   help="generate missing arm texts with the local model")
    c.add_argument("--model", help="checkpoint for --generate (default: embedded model)")
    c.add_argument("--batch-size", type=_positive_int, default=8)
    a = st.add_parser("assign", help="assign a draft study's units to raters")
    a.add_argument("id", type=_positive_int)
    a.add_argument("--raters", required=True)
    a.add_argument("--k", type=_positive_int, required=True)
    st.add_parser("list", help="every study with status and progress")
    for verb, text in (("status", "progress per rater and arm"), ("pause", "pause ratings"),
                       ("resume", "resume a paused study"),
                       ("close", "close for good; unlocks results and exports")):
        v = st.add_parser(verb, help=text)
        v.add_argument("id", type=_positive_int)
    e = st.add_parser("extend", help="add raters to a running or paused study")
    e.add_argument("id", type=_positive_int)
    e.add_argument("--raters", required=True)
    e.add_argument("--extra-k", type=_nonnegative_int, default=0,
                   help="0: move pending work to the new raters; N: N more ratings per unit")
    r = st.add_parser("report", help="results of a closed study")
    r.add_argument("id", type=_positive_int)
    r.add_argument("--n-boot", type=_nonnegative_int, default=1000)
    r.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="comma list of rouge_l, label_f1, bertscore ('' for none; BERTScore "
                        "takes ~0.05 s per text on a CPU)")
    r.add_argument("--html", help="also write the one-page HTML summary here")
    x = st.add_parser("export", help="ratings (csv/parquet), TRL pairs (jsonl), summary (html)")
    x.add_argument("id", type=_positive_int)
    x.add_argument("--out", required=True)
    x.add_argument("--format", choices=["csv", "parquet", "jsonl", "html"],
                   help="default: from the --out suffix")
    x.add_argument("--min-margin", type=_nonnegative_float, default=0.0,
                   help="jsonl: keep pairs whose mean ratings differ by more than this")
    x.add_argument("--plain", action="store_true",
                   help="jsonl: plain-string prompts instead of chat messages")
    x.add_argument("--n-boot", type=_nonnegative_int, default=1000)
    x.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="html: automatic metrics to include")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("pairs", help="export a radiologist's preference pairs (JSONL)")
    p.add_argument("--reader", required=True)
    p.add_argument("--out", required=True, help="JSONL file for the training pairs")
    p.add_argument("--heldout-out", help="also write the held-out pairs here")
    p.add_argument("--heldout-fraction", type=_fraction, default=0.2)
    p.add_argument("--no-record", action="store_true",
                   help="do not record newly held-out reports in the database")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("nightly", help="train/evaluate/promote per-radiologist adapters")
    p.add_argument("--method", choices=["dpo", "grpo", "memory"], default="dpo")
    p.add_argument("--min-new-feedback", type=_nonnegative_int, default=20,
                   help="train a reader only after this many new ratings")
    p.add_argument("--min-pairs", type=_nonnegative_int, default=8)
    p.add_argument("--min-heldout", type=_nonnegative_int, default=10,
                   help="never promote on fewer held-out reports of the reader")
    p.add_argument("--max-pairs", type=_positive_int, default=256)
    p.add_argument("--readers", help="comma list of usernames (default: everyone)")
    p.add_argument("--force", action="store_true", help="ignore --min-new-feedback")
    p.add_argument("--epochs", type=_positive_float, default=2.0)
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--lr", type=_positive_float, default=2e-4)
    p.add_argument("--lora-layers", type=_positive_int, help="train LoRA in the top N layers only")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--refresh", type=_nonnegative_int, default=20,
                   help="pre-draft this many next cases per promoted reader")
    p.add_argument("--model", help="base checkpoint (default: the embedded model)")
    p.add_argument("--json", help="write the run report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser("adapters", help="list, promote or roll back adapter versions")
    ad = p.add_subparsers(dest="adapters_cmd", required=True)
    a = ad.add_parser("list")
    a.add_argument("--reader")
    a = ad.add_parser("promote", help="make a version active")
    a.add_argument("reader")
    a.add_argument("version", type=_positive_int)
    a = ad.add_parser("rollback", help="back to the version active before the current one")
    a.add_argument("reader")
    a.add_argument("--to", type=_positive_int, help="a specific version instead")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("feedback", help="import existing feedback (draft -> signed impression)")
    fb = p.add_subparsers(dest="feedback_cmd", required=True)
    a = fb.add_parser("import", help="CSV: reader, uid, edited impression[, ai_text, rating]",
                      description=_feedback_help(),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("file", help="UTF-8 CSV with a header row (columns below)")
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("simulate", help="personalization benchmarks on IU X-ray (end to end)")
    from core.simulate import add_arguments as _simulate_arguments

    _simulate_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("evaluate", help="score a predictions CSV against reference impressions")
    p.add_argument("--pred", required=True, help="CSV with uid, prediction (what generate --out writes)")
    p.add_argument("--ref", required=True, help="CSV with uid, impression[, findings] (e.g. IU reports.csv)")
    p.add_argument("--pred-col", default="prediction", help="predictions text column")
    p.add_argument("--ref-col", default="impression", help="references text column")
    p.add_argument("--findings-col", default="findings",
                   help="references findings column for consistency ('' to skip)")
    p.add_argument("--json", help="also write the metrics as JSON here")
    p.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (faster)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-sft", help="SFT of the shared base adapter on the train split")
    p.add_argument("--epochs", type=_positive_float, default=1.0)
    p.add_argument("--max-steps", type=_steps, default=-1, help="cap on optimizer steps (-1: epochs)")
    p.add_argument("--lr", type=_positive_float, default=2e-4)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--max-examples", type=_positive_int, help="a seeded subset of the train reports")
    p.add_argument("--shots", type=_nonnegative_int,
                   help="retrieved examples per prompt (default: the pipeline's, C2FConfig.shots)")
    p.add_argument("--eval-examples", type=_nonnegative_int, default=64,
                   help="dev reports for the before/after completion loss (0: none)")
    p.add_argument("--max-length", type=_positive_int, default=1024)
    p.add_argument("--lora-r", type=_positive_int, default=8)
    p.add_argument("--lora-alpha", type=_positive_int, help="default: 2 x rank")
    p.add_argument("--lora-layers", type=_positive_int, help="LoRA in the top N layers only")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--max-minutes", type=_positive_float, help="stop training after this wall time")
    p.add_argument("--source", help="only reports of this source (e.g. iu-xray)")
    p.add_argument("--model", help="base checkpoint (default: the embedded model)")
    p.add_argument("--out", help="also copy the adapter here (e.g. core/assets/base-adapter)")
    p.add_argument("--no-promote", action="store_true",
                   help="keep the new version as a candidate instead of making it active")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_sft)

    # -- more commands: helpers insert their sub-parsers above this line, one block each --

    p = sub.add_parser("setup", help="migrate, prepare the model, write demo data (new or "
                                     "demo database only)")
    p.add_argument("--reports", type=_positive_int, default=60, help="demo reports")
    p.add_argument("--limit", type=_nonnegative_int, default=60,
                   help="draft AI impressions for at most this many demo reports")
    p.set_defaults(func=cmd_setup)
    return parser


@contextlib.contextmanager
def _database(db: str | None):
    """Make ``--db`` the configured database while the command runs, for every module that
    reads :func:`core.config.settings` and every process the command starts (so adapters, the
    nightly lock, caches and logs follow it); restored afterwards, for in-process callers."""
    if not db:
        yield
        return
    before = os.environ.get("IMPRESSIONIST_DB")
    os.environ["IMPRESSIONIST_DB"] = str(Path(db).expanduser().absolute())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("IMPRESSIONIST_DB", None)
        else:
            os.environ["IMPRESSIONIST_DB"] = before


def _exit_status(exc: Exception) -> int:
    """Print one line for ``exc`` on stderr and return the exit status: 2 for bad input (a
    ValueError such as our validation errors, a bad configuration value or a file that is not
    UTF-8; a weak password or failed sign-in; an unknown user, study or report; a file that
    does not exist), 1 for anything else (a traceback first when it is not one of ours)."""
    import traceback

    import duckdb

    from core.errors import AuthError, ImpressionistError, NotFound

    if isinstance(exc, UnicodeDecodeError):
        print(f"error: a file is not UTF-8 text ({exc}); save it as UTF-8", file=sys.stderr)
        return 2
    if isinstance(exc, (ValueError, AuthError, NotFound, FileNotFoundError, IsADirectoryError,
                        NotADirectoryError)):
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, ImpressionistError):
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, duckdb.Error):
        # e.g. the disk is full: the transaction was rolled back, nothing was written.
        print(f"error: the database refused the change ({type(exc).__name__}: {exc}); "
              f"nothing was written", file=sys.stderr)
        return 1
    traceback.print_exception(exc)
    print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 anything else).

    The one place that turns errors into exit statuses, and that closes what the command
    opened (databases, progress bars), on success and on every error.
    """
    args = build_parser().parse_args(argv)  # a bad option exits 2 here, before anything loads
    with _database(args.db), contextlib.ExitStack() as cleanup:
        args.cleanup = cleanup
        try:
            return args.func(args)
        except Exception as exc:  # noqa: BLE001 - mapped to an exit status, see _exit_status
            return _exit_status(exc)
