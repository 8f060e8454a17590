"""``python -m core <command>``: everything Impressionist does, from the shell.

Examples::

    python -m core setup                      # migrate, prepare the embedded model, demo data
    python -m core import ../shared/data/iu_xray/reports.csv
    python -m core import reports/ --format mimic-cxr
    python -m core import export.csv --format csv --map findings=FINDINGS_TEXT
    python -m core generate --limit 200
    echo 'a-long-password' | python -m core users add dr_lee --role radiologist
    python -m core users list

Exit status: 0 on success, 2 on bad input (with a message naming the file, row and field),
1 on any other failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import settings

DEMO_USERS = (
    ("radiologist", "radiologist", "demo-radiologist"),
    ("radiologist2", "radiologist", "demo-radiologist2"),
    ("coordinator", "coordinator", "demo-coordinator"),
    ("admin", "admin", "demo-admin"),
)


def _store(args):
    from core.store import Store

    store = Store(args.db or settings().db_path)
    store.migrate()
    return store


def _mapping(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--map {pair!r}: expected FIELD=COLUMN, e.g. findings=FINDINGS")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# -- commands -------------------------------------------------------------------------------------
def cmd_import(args) -> int:
    from core.ingest import import_file

    store = _store(args)
    result = import_file(store, args.file, fmt=args.format, mapping=_mapping(args.map),
                         require_impression=not args.allow_missing_impression, actor="cli")
    print(result.summary())
    return 0


def _generator(model: str | None, backend: str | None = None):
    """The configured model on the configured backend (``--backend``/``IMPRESSIONIST_BACKEND``)."""
    from core.backends import load_backend

    path = Path(model) if model else settings().model_path
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path}: run `make setup` (or pass --model PATH)")
    return load_backend(backend or settings().backend, path)


def cmd_generate(args) -> int:
    from core import generate

    config = generate.C2FConfig(llm=args.llm)
    if args.inp or args.out:
        if not (args.inp and args.out):
            print("error: --in and --out go together", file=sys.stderr)
            return 2
        return generate.generate_csv(args.inp, args.out,
                                     generator=_generator(args.model, args.backend),
                                     style=args.style, reader=args.reader,
                                     batch_size=args.batch_size, config=config)
    store = _store(args)
    generator = _generator(args.model, args.backend)
    n = generate.fill_missing(store, generator, limit=args.limit, batch_size=args.batch_size,
                              pipeline=generate.pipeline_for(store, generator, config))
    print(f"generated {n} impressions")
    return 0


def cmd_users(args) -> int:
    from core import auth

    store = _store(args)
    if args.users_cmd == "add":
        password = sys.stdin.readline().rstrip("\n")
        reader = auth.create_user(store, args.name, args.role, password, actor="cli")
        print(f"added {reader.username} ({reader.role})")
    elif args.users_cmd == "list":
        for r in store.list_readers():
            print(f"{r.username:24} {r.role:12} {'active' if r.active else 'disabled'}")
    elif args.users_cmd == "disable":
        store.set_reader_active(args.name, False)
        store.audit("cli", "user_disabled", {"username": args.name})
        print(f"disabled {args.name}")
    return 0


def cmd_demo(args) -> int:
    """Create the demo accounts and demo reports (idempotent: existing data is kept)."""
    from core import auth
    from core.demo import synthetic_reports
    from core.errors import StoreError

    store = _store(args)
    existing = {r.username for r in store.list_readers()}
    for name, role, password in DEMO_USERS:
        if name not in existing:
            try:
                auth.create_user(store, name, role, password, actor="demo", check_rules=False)
            except StoreError:
                pass
    imported, _ = store.import_reports(synthetic_reports(args.reports, seed=0), file="demo",
                                       fmt="demo", actor="demo")
    print(f"demo data: {imported} new synthetic reports, accounts: "
          + ", ".join(f"{n}/{p}" for n, _, p in DEMO_USERS))
    if args.generate:
        from core import generate

        n = generate.fill_missing(store, _generator(args.model), batch_size=8)
        print(f"generated {n} AI impressions for the demo queue")
    return 0


def cmd_prepare_model(args) -> int:
    from core.models import prepare_default_model

    path = prepare_default_model(dest=args.dest or settings().model_path, force=args.force)
    print(f"embedded model ready at {path}")
    return 0


def cmd_setup(args) -> int:
    """Migrate the database, prepare the embedded model and write the demo data."""
    cmd_prepare_model(argparse.Namespace(dest=None, force=False))
    store = _store(args)
    print(f"database {store.path} at schema version {store.schema_version()}")
    store.close()
    return cmd_demo(argparse.Namespace(db=args.db, reports=args.reports, generate=True,
                                       model=None))


def cmd_backup(args) -> int:
    store = _store(args)
    counts = store.backup(args.dest)
    store.audit("cli", "backup", {"to": Path(args.dest).name, **counts})
    print(f"backup written to {args.dest}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return 0


def cmd_restore(args) -> int:
    store = _store(args)
    counts = store.restore(args.src)
    print(f"restored {args.src}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items())
          + f" (previous database kept as {store.path}.before-restore)")
    return 0


def cmd_study(args) -> int:
    """Human evaluation studies: create, assign, status, pause/resume, extend, close, report,
    export (see core.study)."""
    from datetime import datetime, timezone

    from core import study
    from core.auth import User, require
    from core.errors import NotFound, ValidationError

    store = _store(args)
    try:
        if args.as_user:
            try:
                reader = store.get_reader(args.as_user)
            except NotFound:
                raise ValidationError(f"--as {args.as_user!r}: no such user") from None
            user = require(User(reader.id, reader.username, reader.role,
                                datetime.now(timezone.utc)), "coordinator", "admin")
        else:  # whoever can run the CLI can open the database file: an admin named "cli"
            user = User(0, "cli", "admin", datetime.now(timezone.utc))
        return _study_verb(args, store, user, study)
    finally:
        store.close()


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
        model = (study.model_text_maker(_generator(args.model), batch_size=args.batch_size,
                                        progress=True, store=store) if args.generate else None)
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
        status = getattr(study, cmd)(store, user, args.id)
        print(f"study {args.id} is {status}")
    elif cmd == "extend":
        n = study.extend(store, user, args.id, split(args.raters), extra_k=args.extra_k)
        print(f"study {args.id}: {n} tasks for {', '.join(split(args.raters))}")
    elif cmd == "report":
        from core.study_report import summary_text

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
    from core.pairs import pairs_for_reader, write_jsonl

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

    from core import distributed
    from core.nightly import NightlyConfig, follow, run_nightly
    from core.train import TrainConfig

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

        Path(args.json).write_text(_json.dumps(asdict(report), indent=2, default=str))
    return 0 if all(o.status != "failed" for o in report.outcomes) else 1


def cmd_adapters(args) -> int:
    """List adapter versions; promote one; roll back to the previous one."""
    from core import adapters

    store = _store(args)
    if args.adapters_cmd == "list":
        rows = adapters.list_versions(store, reader=args.reader)
        if not rows:
            print("no adapters yet (run `python -m core nightly`)")
        for r in rows:
            m = r.get("metrics") or {}
            rouge = f"{m['rougeL']:.1f}" if isinstance(m.get("rougeL"), (int, float)) else "-"
            print(f"{r['reader']:20} v{r['version']:<4} {r['status']:10} "
                  f"{'ACTIVE' if r['active'] else '':6} {r['method'] or '':7} ROUGE-L {rouge:>5} "
                  f"{r['path']}")
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
    from core.feedback_import import import_feedback

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
    from core.evaluation import evaluate_pairs, format_result, read_pairs, write_json

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
    """SFT of the shared base adapter on the store's train-split reports (core.sft)."""
    from core.sft import run_sft
    from core.train import SFTTrainConfig

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
                      shots=args.shots, eval_examples=args.eval_examples, source=args.source,
                      promote=not args.no_promote, out=args.out)
    finally:
        store.close()
    print(run.summary())
    return 0


# -- more command functions: helpers insert above this line, one function each --


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database file (default: $IMPRESSIONIST_DB or "
                                     "data/impressionist.duckdb)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="import reports from a file or folder")
    p.add_argument("file")
    p.add_argument("--format", default="auto",
                   choices=["auto", "iu-xray", "mimic-cxr", "chexpert-plus", "csv", "jsonl"])
    p.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                   help="column mapping for generic CSV/JSONL (repeatable)")
    p.add_argument("--allow-missing-impression", action="store_true",
                   help="accept reports without an impression")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("generate", help="generate AI impressions")
    p.add_argument("--limit", type=int, help="at most this many reports")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", help="local Hugging Face checkpoint (default: embedded model)")
    p.add_argument("--in", dest="inp", help="CSV with uid, findings[, indication, comparison]")
    p.add_argument("--out", help="CSV to write uid, prediction, style, flags")
    p.add_argument("--style", default="default")
    p.add_argument("--reader", help="use this radiologist's active adapter")
    p.add_argument("--llm", choices=["off", "auto", "always"], default="off",
                   help="when the model drafts: off (retrieval and vote only, the default), auto "
                        "(where the retrieved neighbours disagree) or always")
    p.add_argument("--backend", choices=["transformers", "vllm"],
                   help="generation backend (default: $IMPRESSIONIST_BACKEND or transformers; "
                        "vllm serves many radiologists' adapters in one batch on a GPU)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("users", help="manage users")
    us = p.add_subparsers(dest="users_cmd", required=True)
    a = us.add_parser("add", help="add a user; the password is read from stdin")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=["radiologist", "coordinator", "admin"])
    us.add_parser("list")
    d = us.add_parser("disable")
    d.add_argument("name")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("demo", help="demo accounts and synthetic reports")
    p.add_argument("--reports", type=int, default=60)
    p.add_argument("--generate", action="store_true", help="also generate AI impressions")
    p.add_argument("--model")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("prepare-model", help="convert the embedded GGUF model to safetensors")
    p.add_argument("--dest")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_model)

    p = sub.add_parser("backup", help="consistent copy of the database (safe while the app runs)")
    p.add_argument("dest", help="new backup file, e.g. backups/2026-11-23.duckdb")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the database with a backup")
    p.add_argument("src")
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
    c.add_argument("--n", type=int, required=True, help="number of reports (items)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--raters", help="comma list of radiologists (omit to assign later)")
    c.add_argument("--k", type=int, default=2, help="raters per unit")
    c.add_argument("--scale", default="absolute", choices=["absolute", "relative",
                                                           "acceptability"])
    c.add_argument("--question", action="append", metavar="KEY:TEXT",
                   help="extra yes/no question (repeatable)")
    c.add_argument("--no-default-questions", action="store_true",
                   help="do not ask the four error dimensions")
    c.add_argument("--guideline-file", help="text file shown to raters")
    c.add_argument("--strata", default="normal,source")
    c.add_argument("--sources", help="comma list of report sources to sample from")
    c.add_argument("--external-source", help="source of the 'external' arm, e.g. chexpert-plus")
    c.add_argument("--typo-rate", type=float, default=0.03)
    c.add_argument("--from-model", help="use only stored generations of this model")
    c.add_argument("--generate", action="store_true",
                   help="generate missing arm texts with the local model")
    c.add_argument("--model", help="checkpoint for --generate (default: embedded model)")
    c.add_argument("--batch-size", type=int, default=8)
    a = st.add_parser("assign", help="assign a draft study's units to raters")
    a.add_argument("id", type=int)
    a.add_argument("--raters", required=True)
    a.add_argument("--k", type=int, required=True)
    st.add_parser("list", help="every study with status and progress")
    for verb, text in (("status", "progress per rater and arm"), ("pause", "pause ratings"),
                       ("resume", "resume a paused study"),
                       ("close", "close for good; unlocks results and exports")):
        v = st.add_parser(verb, help=text)
        v.add_argument("id", type=int)
    e = st.add_parser("extend", help="add raters to a running or paused study")
    e.add_argument("id", type=int)
    e.add_argument("--raters", required=True)
    e.add_argument("--extra-k", type=int, default=0,
                   help="0: move pending work to the new raters; N: N more ratings per unit")
    r = st.add_parser("report", help="results of a closed study")
    r.add_argument("id", type=int)
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="comma list of rouge_l, label_f1, bertscore ('' for none; BERTScore "
                        "takes ~0.05 s per text on a CPU)")
    r.add_argument("--html", help="also write the one-page HTML summary here")
    x = st.add_parser("export", help="ratings (csv/parquet), TRL pairs (jsonl), summary (html)")
    x.add_argument("id", type=int)
    x.add_argument("--out", required=True)
    x.add_argument("--format", choices=["csv", "parquet", "jsonl", "html"],
                   help="default: from the --out suffix")
    x.add_argument("--min-margin", type=float, default=0.0,
                   help="jsonl: keep pairs whose mean ratings differ by more than this")
    x.add_argument("--plain", action="store_true",
                   help="jsonl: plain-string prompts instead of chat messages")
    x.add_argument("--n-boot", type=int, default=1000)
    x.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="html: automatic metrics to include")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("pairs", help="export a radiologist's preference pairs (JSONL)")
    p.add_argument("--reader", required=True)
    p.add_argument("--out", required=True, help="JSONL file for the training pairs")
    p.add_argument("--heldout-out", help="also write the held-out pairs here")
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--no-record", action="store_true",
                   help="do not record newly held-out reports in the database")
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser("nightly", help="train/evaluate/promote per-radiologist adapters")
    p.add_argument("--method", choices=["dpo", "grpo", "memory"], default="dpo")
    p.add_argument("--min-new-feedback", type=int, default=20,
                   help="train a reader only after this many new ratings")
    p.add_argument("--min-pairs", type=int, default=8)
    p.add_argument("--min-heldout", type=int, default=10,
                   help="never promote on fewer held-out reports of the reader")
    p.add_argument("--max-pairs", type=int, default=256)
    p.add_argument("--readers", help="comma list of usernames (default: everyone)")
    p.add_argument("--force", action="store_true", help="ignore --min-new-feedback")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-layers", type=int, help="train LoRA in the top N layers only")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--refresh", type=int, default=20,
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
    a.add_argument("version", type=int)
    a = ad.add_parser("rollback", help="back to the version active before the current one")
    a.add_argument("reader")
    a.add_argument("--to", type=int, help="a specific version instead")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("feedback", help="import existing feedback (draft -> signed impression)")
    fb = p.add_subparsers(dest="feedback_cmd", required=True)
    a = fb.add_parser("import", help="CSV: reader, uid, edited impression[, ai_text, rating]")
    a.add_argument("file")
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
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="cap on optimizer steps (-1: epochs)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-examples", type=int, help="a seeded subset of the train reports")
    p.add_argument("--shots", type=int, default=3, help="retrieved examples per prompt")
    p.add_argument("--eval-examples", type=int, default=64,
                   help="dev reports for the before/after completion loss (0: none)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, help="default: 2 x rank")
    p.add_argument("--lora-layers", type=int, help="LoRA in the top N layers only")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--max-minutes", type=float, help="stop training after this wall time")
    p.add_argument("--source", help="only reports of this source (e.g. iu-xray)")
    p.add_argument("--model", help="base checkpoint (default: the embedded model)")
    p.add_argument("--out", help="also copy the adapter here (e.g. core/assets/base-adapter)")
    p.add_argument("--no-promote", action="store_true",
                   help="keep the new version as a candidate instead of making it active")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_sft)

    # -- more commands: helpers insert their sub-parsers above this line, one block each --

    p = sub.add_parser("setup", help="migrate, prepare the model, write demo data")
    p.add_argument("--reports", type=int, default=60)
    p.set_defaults(func=cmd_setup)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import AuthError, ImpressionistError, ValidationError

    try:
        from core.importers import ImportValidationError
    except ImportError:  # pragma: no cover - importers are part of the package
        ImportValidationError = ValidationError  # type: ignore

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ImportValidationError, ValidationError, AuthError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ImpressionistError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        import duckdb

        if not isinstance(exc, duckdb.Error):
            raise
        # e.g. the disk is full: the transaction was rolled back, nothing was written.
        print(f"error: the database refused the change ({type(exc).__name__}: {exc}); "
              f"nothing was written", file=sys.stderr)
        return 1
