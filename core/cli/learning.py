"""Learning from feedback: ``pairs``, ``nightly``, ``adapters`` and ``train-sft``."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

from core.adapters.registry import list_versions, promote, rollback
from core.cli.common import existing_store, output_path, table
from core.cli.flags import add_config_flags, config_values, nonnegative_int, positive_int
from core.errors import NotFound, ValidationError
from core.feedback.annotate import RATERS
from core.generation.pipeline import C2FConfig
from core.learning import distributed
from core.learning.nightly import NightlyConfig, follow, plan, run_nightly
from core.learning.pairs import pairs_for_reader, write_jsonl
from core.learning.sft import run_sft
from core.learning.sft_trainer import SFTTrainConfig
from core.learning.train import TrainConfig


def _quiet_libraries() -> None:
    """--quiet for cron: no progress bars or deprecation warnings from the model libraries
    either (loading weights, tokenizing), only the summary and real errors."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging  # deferred: loads with the model anyway

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets  # deferred: a second to import, only for --quiet (TRL brings it)

    datasets.disable_progress_bars()


def cmd_pairs(args) -> int:
    """Export one radiologist's preference pairs as JSONL (TRL preference format)."""
    store = existing_store(args)
    reader = store.get_reader(args.reader)
    heldout = config_values(args, NightlyConfig)["heldout_fraction"]  # the nightly job's split
    pairs = pairs_for_reader(store, reader.id, heldout_fraction=heldout,
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
    if args.plan:  # trains nothing: no other rank to wait for
        return _plan(args)
    # Under `accelerate launch` (several GPUs): rank 0 runs the job; the others only train.
    distributed.init()
    if not distributed.is_main():
        follow()
        distributed.finish()
        return 0
    if args.json:
        output_path(args.json, "--json")
    if args.quiet:
        _quiet_libraries()
    try:
        store = existing_store(args)
        config = _nightly_config(args, store)
    except BaseException:
        distributed.broadcast(None)  # a bad flag or database: the other ranks stop waiting
        distributed.finish()
        raise
    try:
        report = run_nightly(store, config, progress=not args.quiet)
    finally:
        distributed.finish()
    print(report.summary())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(asdict(report), indent=2, default=str))
    return 0 if all(o.status != "failed" for o in report.outcomes) else 1


def _nightly_config(args, store) -> NightlyConfig:
    nightly = config_values(args, NightlyConfig)
    for name in nightly.get("readers") or ():  # a typo in a cron line must not train no one quietly
        try:
            reader = store.get_reader(name)
        except NotFound:
            raise ValidationError(f"--readers {name}: no such user (python -m core users list)") from None
        if reader.role not in RATERS or not reader.active:
            raise ValidationError(f"--readers {name}: {'a ' + reader.role if reader.active else 'disabled'}"
                                  f", not an active radiologist: only radiologists have adapters")
    train = TrainConfig(method="grpo" if nightly["method"] == "grpo" else "dpo",
                        **config_values(args, TrainConfig))
    return NightlyConfig(**nightly, train=train)


def _plan(args) -> int:
    """``nightly --plan``: who the run would train, and why the others wait."""
    if args.json:
        output_path(args.json, "--json")
    store = existing_store(args)
    todo = plan(store, _nightly_config(args, store))
    print(table(sorted(todo.items()), ("reader", "next nightly run")) if todo else "no active radiologists")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"plan": todo}, indent=2))
    return 0


def cmd_adapters(args) -> int:
    """List adapter versions; promote one; roll back to the previous one."""
    store = existing_store(args)
    if args.adapters_cmd == "list":
        rows = list_versions(store, reader=args.reader)
        if not rows:
            print("no adapters yet (run `python -m core nightly`)")
            return 0
        lines = []
        for r in rows:
            m = r.get("metrics") or {}
            rouge = f"{m['rougeL']:.1f}" if isinstance(m.get("rougeL"), (int, float)) else "-"
            lines.append((r["reader"], f"v{r['version']}",
                          "ACTIVE" if r["state"] == "active" else r["state"],
                          r["method"] or "-", rouge, r["path"]))
        print(table(lines, ("reader", "version", "state", "method", "ROUGE-L", "path")))
    elif args.adapters_cmd == "promote":
        prev = promote(store, args.reader, args.version, actor="cli", reason="promoted by hand",
                       override_gate=args.override_gate)
        print(f"{args.reader}: v{args.version} is already active" if prev == args.version else
              f"{args.reader}: v{args.version} is active (was "
              f"{'v' + str(prev) if prev else 'the shared model'})")
    elif args.adapters_cmd == "rollback":
        old, new = rollback(store, args.reader, args.to, actor="cli")
        print(f"{args.reader}: rolled back from v{old} to "
              f"{'v' + str(new) if new else 'the shared model'}")
    return 0


def cmd_train_sft(args) -> int:
    """SFT of the shared base adapter on the store's train-split reports (core.learning.sft)."""
    store = existing_store(args)
    config = SFTTrainConfig(**config_values(args, SFTTrainConfig), progress=not args.quiet)
    run = run_sft(store, config, model_path=args.model, max_examples=args.max_examples,
                  shots=C2FConfig().shots if args.shots is None else args.shots,
                  eval_examples=args.eval_examples, source=args.source,
                  promote=not args.no_promote, out=args.out)
    print(run.summary())
    return 0


def add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="export a radiologist's preference pairs (JSONL)")
    p.add_argument("--reader", required=True)
    p.add_argument("--out", required=True, help="JSONL file for the training pairs")
    p.add_argument("--heldout-out", help="also write the held-out pairs here")
    add_config_flags(p, NightlyConfig, {"heldout_fraction": None})
    p.add_argument("--no-record", action="store_true",
                   help="do not record newly held-out reports in the database")
    p.set_defaults(func=cmd_pairs)


def add_nightly(sub) -> None:
    p = sub.add_parser("nightly", help="train/evaluate/promote per-radiologist adapters")
    add_config_flags(p, NightlyConfig, {
        "method": None, "min_new_feedback": None, "min_pairs": None,
        "min_heldout_reports": "--min-heldout", "max_pairs": None, "readers": None,
        "force": None})
    add_config_flags(p, TrainConfig, {"epochs": None, "batch_size": None,
                                      "learning_rate": "--lr", "lora_layers": None,
                                      "threads": None})
    add_config_flags(p, NightlyConfig, {"refresh_per_reader": "--refresh",
                                        "model_path": "--model"})
    p.add_argument("--json", help="write the run report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--plan", action="store_true",
                   help="only say who this run would train and why the others wait (trains "
                        "and writes nothing)")
    p.set_defaults(func=cmd_nightly)


def add_adapters(sub) -> None:
    p = sub.add_parser("adapters", help="list, promote or roll back adapter versions")
    ad = p.add_subparsers(dest="adapters_cmd", required=True)
    a = ad.add_parser("list")
    a.add_argument("--reader")
    a = ad.add_parser("promote", help="make a version active")
    a.add_argument("reader")
    a.add_argument("version", type=positive_int)
    a.add_argument("--override-gate", action="store_true",
                   help="promote a version the nightly gate rejected (recorded in the log); "
                        "without it such a promotion is refused with exit status 2")
    a = ad.add_parser("rollback", help="back to the version active before the current one")
    a.add_argument("reader")
    a.add_argument("--to", type=positive_int, help="a specific version instead")
    p.set_defaults(func=cmd_adapters)


def add_train_sft(sub) -> None:
    p = sub.add_parser("train-sft", help="SFT of the shared base adapter on the train split")
    add_config_flags(p, SFTTrainConfig, {"epochs": None, "max_steps": None,
                                         "learning_rate": "--lr", "batch_size": None})
    p.add_argument("--max-examples", type=positive_int,
                   help="a seeded subset of the train reports")
    p.add_argument("--shots", type=nonnegative_int,
                   help="retrieved examples per prompt (default: the pipeline's, C2FConfig.shots)")
    p.add_argument("--eval-examples", type=nonnegative_int, default=64,
                   help="dev reports for the before/after completion loss (0: none)")
    add_config_flags(p, SFTTrainConfig, {
        "max_length": None, "lora_r": None, "lora_alpha": None, "lora_layers": None,
        "dtype": None, "seed": None, "threads": None, "max_minutes": None,
        "init_adapter": None})
    p.add_argument("--source", help="only reports of this source (e.g. iu-xray)")
    p.add_argument("--model", help="base checkpoint (default: the embedded model)")
    p.add_argument("--out", help="also copy the adapter here (e.g. core/assets/base-adapter)")
    p.add_argument("--no-promote", action="store_true",
                   help="keep the new version as a candidate instead of making it active")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_sft)
