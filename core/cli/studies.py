"""``study``: create, assign, list, status, pause/resume/close, extend, report, export."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from core.accounts.auth import User, require
from core.cli.common import cli_user, existing_store, output_path
from core.cli.flags import comma_list, fraction, nonnegative_float, nonnegative_int, positive_int
from core.cli.generation import generator
from core.errors import NotFound, ValidationError
from core.generation.models import BATCH_SIZE
from core.studies.assignment import assign_raters, extend
from core.studies.exports import export_html, export_preferences, export_ratings
from core.studies.lifecycle import StudyDesign, close, create_study, list_studies, pause, resume
from core.studies.progress import progress
from core.studies.protocol import DEFAULT_GUIDELINE, DEFAULT_QUESTIONS, SCALES
from core.studies.report import summary_text
from core.studies.results import results
from core.studies.texts import model_text_maker, stored_style_maker


def _user(args, store) -> User:
    """``--as USER`` (a coordinator or admin), else the CLI's own admin."""
    if not args.as_user:
        return cli_user()
    try:
        reader = store.get_reader(args.as_user)
    except NotFound:
        raise ValidationError(f"--as {args.as_user!r}: no such user") from None
    return require(User(reader.id, reader.username, reader.role, datetime.now(UTC)),
                   "coordinator", "admin")


def _texts_with_progress(args, make, chunk: int = 32):
    """``make_texts`` that makes texts ``chunk`` reports at a time under one tqdm bar (stderr)
    over every arm, instead of the model's own bar per call."""
    from tqdm.auto import tqdm  # tqdm pulls in its extras: only the verbs that show progress

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


def _create(args, store, user) -> None:
    questions = None if not (args.question or args.no_default_questions) else (
        ([] if args.no_default_questions else list(DEFAULT_QUESTIONS))
        + list(args.question or []))
    guideline = (Path(args.guideline_file).read_text(encoding="utf-8")
                 if args.guideline_file else DEFAULT_GUIDELINE)
    design = StudyDesign(
        name=args.name, arms=comma_list(args.arms), n_items=args.n, seed=args.seed,
        raters=comma_list(args.raters), k=args.k, scale=args.scale, questions=questions,
        guideline=guideline, strata=comma_list(args.strata),
        sources=comma_list(args.sources) or None, external_source=args.external_source,
        typo_rate=args.typo_rate, model=args.from_model)
    model = (_texts_with_progress(args, model_text_maker(
        generator(args.model), batch_size=args.batch_size, store=store))
             if args.generate else None)
    # Style arms are rendered from stored base texts by rules; the model only runs with
    # --generate, for texts nobody has generated yet.
    study_id = create_study(store, user, design, make_texts=stored_style_maker(store, model))
    s = store.get_study(study_id)
    print(f"created study {study_id} ({s['status']}): {s['n_items']} items x "
          f"{len(s['arms'])} arms" + (f", {len(design.raters)} raters, k={design.k}"
                                      if design.raters else
                                      f"; assign raters with: python -m core study assign "
                                      f"{study_id} --raters A,B,C --k 2"))


def _assign(args, store, user) -> None:
    n = assign_raters(store, user, args.id, comma_list(args.raters), args.k)
    print(f"study {args.id}: {n} tasks assigned")


def _list(args, store, user) -> None:
    for s in list_studies(store, user):
        print(f"{s['id']:>4}  {s['status']:8} {s['n_done']:>6}/{s['n_tasks']:<6} "
              f"{s['name']}  [{', '.join(s['arms'])}]")


def _status(args, store, user) -> None:
    p = progress(store, user, args.id)
    print(f"study {p.study_id}: {p.name} [{p.status}] k={p.k} items={p.n_items} "
          f"done {p.done}/{p.total} ("
          + (f"alpha so far {p.alpha_so_far:.3f}" if p.alpha_so_far == p.alpha_so_far
             else "alpha: not yet, no text rated by two raters") + ")")
    print(p.per_rater.to_string(index=False))
    print(p.per_arm.to_string(index=False))


_CHANGES = {"pause": pause, "resume": resume, "close": close}


def _change(args, store, user) -> None:
    if args.study_cmd == "close" and progress(store, user, args.id).done == 0:
        print(f"warning: study {args.id} has no ratings yet; once closed it takes no more "
              f"ratings, and its results will be empty", file=sys.stderr)
    status = _CHANGES[args.study_cmd](store, user, args.id)
    print(f"study {args.id} is {status}")


def _extend(args, store, user) -> None:
    n = extend(store, user, args.id, comma_list(args.raters), extra_k=args.extra_k)
    print(f"study {args.id}: {n} tasks for {', '.join(comma_list(args.raters))}")


def _report(args, store, user) -> None:
    if args.html:
        output_path(args.html, "--html")
    res = results(store, user, args.id, n_boot=args.n_boot, metrics=comma_list(args.metrics))
    print(summary_text(res))
    if args.html:
        export_html(store, user, args.id, args.html, res=res)
        print(f"wrote {args.html}")


def _export(args, store, user) -> None:
    output_path(args.out, "--out")
    fmt = (args.format or Path(args.out).suffix.lstrip(".")).lower()
    if fmt in ("csv", "parquet"):
        export_ratings(store, user, args.id, args.out, fmt=fmt)
        print(f"wrote {args.out}")
    elif fmt in ("jsonl", "trl"):
        n = export_preferences(store, user, args.id, args.out, min_margin=args.min_margin,
                               conversational=not args.plain)
        print(f"wrote {n} preference pairs to {args.out}")
    elif fmt in ("html", "htm"):
        export_html(store, user, args.id, args.out, n_boot=args.n_boot,
                    metrics=comma_list(args.metrics))
        print(f"wrote {args.out}")
    else:
        raise ValidationError(f"--format {fmt!r}: choose csv, parquet, jsonl or html")


_VERBS = {"create": _create, "assign": _assign, "list": _list, "status": _status,
          "pause": _change, "resume": _change, "close": _change, "extend": _extend,
          "report": _report, "export": _export}


def cmd_study(args) -> int:
    """Human evaluation studies: create, assign, status, pause/resume, extend, close, report,
    export (see core.studies)."""
    store = existing_store(args)
    _VERBS[args.study_cmd](args, store, _user(args, store))
    return 0


def _add_create(st) -> None:
    c = st.add_parser("create", help="sample reports, collect arm texts, blind, assign")
    c.add_argument("--name", required=True)
    c.add_argument("--arms", required=True,
                   help="comma list: original, base, adapter:NAME, style:brief|bullets|"
                        "comprehensive, typos[:RATE], external")
    c.add_argument("--n", type=positive_int, required=True, help="number of reports (items)")
    c.add_argument("--seed", type=int, default=StudyDesign.seed)
    c.add_argument("--raters", help="comma list of radiologists (omit to assign later)")
    c.add_argument("--k", type=positive_int, default=StudyDesign.k, help="raters per unit")
    c.add_argument("--scale", default=StudyDesign.scale, choices=list(SCALES),
                   help="what raters answer: absolute (how good is it, -2..2), relative "
                        "(compared with the original, -2..2) or acceptability (could it be "
                        "signed, -1..1)")
    c.add_argument("--question", action="append", metavar="KEY:TEXT",
                   help="extra yes/no question (repeatable)")
    c.add_argument("--no-default-questions", action="store_true",
                   help="do not ask the four error dimensions")
    c.add_argument("--guideline-file", help="text file shown to raters")
    c.add_argument("--strata", default=",".join(StudyDesign.strata))
    c.add_argument("--sources", help="comma list of report sources to sample from")
    c.add_argument("--external-source", help="source of the 'external' arm, e.g. chexpert-plus")
    c.add_argument("--typo-rate", type=fraction, default=StudyDesign.typo_rate)
    c.add_argument("--from-model", help="use only stored generations of this model")
    c.add_argument("--generate", action="store_true",
                   help="generate missing arm texts with the local model")
    c.add_argument("--model", help="checkpoint for --generate (default: embedded model)")
    c.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)


def _add_lifecycle(st) -> None:
    a = st.add_parser("assign", help="assign a draft study's units to raters")
    a.add_argument("id", type=positive_int)
    a.add_argument("--raters", required=True)
    a.add_argument("--k", type=positive_int, required=True)
    st.add_parser("list", help="every study with status and progress")
    for verb, text in (("status", "progress per rater and arm"), ("pause", "pause ratings"),
                       ("resume", "resume a paused study"),
                       ("close", "close for good; unlocks results and exports")):
        v = st.add_parser(verb, help=text)
        v.add_argument("id", type=positive_int)
    e = st.add_parser("extend", help="add raters to a running or paused study")
    e.add_argument("id", type=positive_int)
    e.add_argument("--raters", required=True)
    e.add_argument("--extra-k", type=nonnegative_int, default=0,
                   help="0: move pending work to the new raters; N: N more ratings per unit")


def _add_results(st) -> None:
    r = st.add_parser("report", help="results of a closed study")
    r.add_argument("id", type=positive_int)
    r.add_argument("--n-boot", type=nonnegative_int, default=1000)
    r.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="comma list of rouge_l, label_f1, bertscore ('' for none; BERTScore "
                        "takes ~0.05 s per text on a CPU)")
    r.add_argument("--html", help="also write the one-page HTML summary here")
    x = st.add_parser("export", help="ratings (csv/parquet), TRL pairs (jsonl), summary (html)")
    x.add_argument("id", type=positive_int)
    x.add_argument("--out", required=True)
    x.add_argument("--format", choices=["csv", "parquet", "jsonl", "html"],
                   help="default: from the --out suffix")
    x.add_argument("--min-margin", type=nonnegative_float, default=0.0,
                   help="jsonl: keep pairs whose mean ratings differ by more than this")
    x.add_argument("--plain", action="store_true",
                   help="jsonl: plain-string prompts instead of chat messages")
    x.add_argument("--n-boot", type=nonnegative_int, default=1000)
    x.add_argument("--metrics", default="rouge_l,label_f1,bertscore",
                   help="html: automatic metrics to include")


def add_study(sub) -> None:
    p = sub.add_parser("study", help="human evaluation studies (blinded, multi-rater)")
    p.add_argument("--as", dest="as_user", metavar="USER",
                   help="act as this coordinator/admin (default: an admin named 'cli')")
    st = p.add_subparsers(dest="study_cmd", required=True)
    _add_create(st)
    _add_lifecycle(st)
    _add_results(st)
    p.set_defaults(func=cmd_study)
