"""``generate``: AI impressions for the queue or for a CSV; the model and pipeline it loads."""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from pathlib import Path

from core.adapters.registry import active_adapter
from core.cli.common import existing_store, output_path
from core.cli.flags import add_config_flags, config_values, positive_int
from core.config import BACKENDS, settings
from core.errors import ModelNotPrepared, RetrievalError, StyleError, ValidationError
from core.generation.backends import load_backend
from core.generation.csvfile import generate_csv, read_reports_csv, write_predictions_csv
from core.generation.models import BATCH_SIZE
from core.generation.personal import fill_missing, reader_adapter
from core.generation.pipeline import C2FConfig, pipeline_for
from core.generation.styles import ALIASES, STYLES, resolve_style


def generator(model: str | None, backend: str | None = None):
    """The configured model on the configured backend (``--backend``/``IMPRESSIONIST_BACKEND``)."""
    path = Path(model) if model else settings().model_path
    if not (path / "config.json").exists():
        if model:
            raise ValidationError(f"--model {model}: no Hugging Face checkpoint there "
                                  f"(config.json is missing)")
        raise ModelNotPrepared(f"no model at {path}: run `make setup` (or pass --model PATH)")
    return load_backend(backend or settings().backend, path)


def pipeline(store, config: C2FConfig, model: str | None = None, backend: str | None = None,
             needs_model: bool = False):
    """The generation pipeline of ``store``, with the model loaded only when it can draft.

    Retrieval and vote (``--llm off``) never call the model while there are reports to retrieve
    from, so it is not loaded then (loading takes 20-30 s on a CPU); ``needs_model`` (--llm
    auto/always, --model) loads it.
    """
    made = None
    if not needs_model:
        with contextlib.suppress(RetrievalError):  # nothing to retrieve from: the model writes
            made = pipeline_for(store, None, config)
    if made is None:
        made = pipeline_for(store, generator(model, backend), config)
    if made.index is None:
        print("warning: no reports with impressions to retrieve from (import some first); "
              "the model writes alone and every row is flagged for review", file=sys.stderr)
    return made


def _generate_rows(args, store, config: C2FConfig, cases: list[dict]) -> int:
    """Impressions for the rows of ``--in``, written to ``--out``."""
    from tqdm.auto import tqdm  # tqdm pulls in its extras: only the verbs that show progress

    made = pipeline(store, config, args.model, args.backend,
                    needs_model=config.llm != "off" or bool(args.model))
    outputs: list = []
    with tqdm(total=len(cases), desc="generate", unit="report", file=sys.stderr) as bar:
        for start in range(0, len(cases), 64):
            part = cases[start:start + 64]
            outputs += made.generate(part, style=args.style, batch_size=args.batch_size)
            bar.update(len(part))
    write_predictions_csv(args.out, cases, outputs, args.style)
    flagged = sum(bool(o.flags.get("needs_review")) for o in outputs)
    print(f"wrote {len(outputs)} impressions ({args.style}) to {args.out}; {flagged} flagged "
          f"for review")
    return 0


def _say_when_no_adapter(store, reader: str) -> None:
    """One line on stderr when ``reader`` has no adapter of their own (none promoted yet, and
    none copied in by hand): the shared base writes, which --help's "their active adapter"
    would not lead anyone to expect. An unknown reader is bad input (before the model loads).

    Raises:
        ValidationError: no user named ``reader``.
    """
    if active_adapter(store, reader) is None and reader_adapter(reader, store=store) is None:
        print(f"{reader} has no active adapter: the shared base writes their impressions",
              file=sys.stderr)


def cmd_generate(args) -> int:
    """Fill the queue (stored impressions), or write impressions for a CSV (--in/--out)."""
    config = C2FConfig(**config_values(args, C2FConfig))
    cases = None
    if args.inp or args.out:
        if not (args.inp and args.out):
            raise ValidationError("--in and --out go together")
        output_path(args.out, "--out", inputs=(args.inp,))
        cases = read_reports_csv(args.inp)  # checked (file, encoding, columns, cells) first
    store = existing_store(args)
    if args.reader:  # the reader's own adapter drafts: the model is needed
        if cases is None:
            raise ValidationError("--reader goes with --in/--out (the queue is filled for "
                                  "everyone; the nightly job pre-drafts each reader's cases)")
        _say_when_no_adapter(store, args.reader)
        return generate_csv(args.inp, args.out, generator=generator(args.model, args.backend),
                            style=args.style, reader=args.reader,
                            batch_size=args.batch_size, store=store, config=config)
    if cases is not None:
        return _generate_rows(args, store, config, cases)
    if not store.reports_without_generation(style=args.style, limit=1):
        print(f"generated 0 impressions ({args.style}): every report has one")
        return 0
    made = pipeline(store, config, args.model, args.backend,
                    needs_model=config.llm != "off" or bool(args.model))
    n = fill_missing(store, made.generator, limit=args.limit, batch_size=args.batch_size,
                     style=args.style, pipeline=made)
    print(f"generated {n} impressions ({args.style})")
    return 0


def _styles_help() -> str:
    lines = ["audience styles (--style):"]
    lines += [textwrap.fill(text, 92, initial_indent=f"  {name:15}", subsequent_indent=" " * 17)
              for name, text in STYLES.items()]
    lines.append(textwrap.fill(", ".join(f"{a}={s}" for a, s in sorted(ALIASES.items()) if a),
                               92, initial_indent="  aliases:       ",
                               subsequent_indent=" " * 17))
    return "\n".join(lines)


def style(text: str) -> str:
    """``--style``: a style name or alias (an unknown one is an argparse error, exit 2)."""
    try:
        return resolve_style(text)
    except StyleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate AI impressions",
        description=textwrap.fill(
            "Fill the annotation queue (stored AI impressions for reports that have none), or "
            "with --in/--out write impressions for the rows of a CSV. The model is loaded only "
            "when it drafts (--llm auto/always, --reader, --model).", 92),
        epilog=_styles_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=positive_int, help="at most this many reports")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--model", help="local Hugging Face checkpoint (default: embedded model)")
    p.add_argument("--in", dest="inp", metavar="CSV",
                   help="UTF-8 CSV with columns uid, findings[, indication, comparison, author]")
    p.add_argument("--out", metavar="CSV",
                   help="CSV to write: uid, prediction, style, needs_review, flags")
    p.add_argument("--style", type=style, default="default",
                   help="audience style (below): default, brief, bullets, comprehensive")
    p.add_argument("--reader", help="with --in: draft as this radiologist (their active "
                                    "adapter; without one the shared base drafts, and a notice "
                                    "says so)")
    add_config_flags(p, C2FConfig, {"llm": "--llm"})
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="generation backend (default: $IMPRESSIONIST_BACKEND or transformers; "
                        "vllm serves many radiologists' adapters in one batch on a GPU)")
    p.set_defaults(func=cmd_generate)
