"""``python -m core generate``'s work: a CSV of findings in, a CSV of impressions out.

Each row is drafted with the reader's active adapter when ``--reader`` names one that has been
promoted (:mod:`core.generation.personal`), else by the shared pipeline.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Sequence

from core.config import settings
from core.errors import ImportValidationError, ImpressionistError, ValidationError
from core.generation.models import BATCH_SIZE
from core.generation.personal import reader_adapter, reader_drafts
from core.generation.pipeline import C2FConfig, GenerationOutput, pipeline_for
from core.generation.styles import resolve_style
from core.ingest.common import read_csv_table
from core.store.database import Store


def generate_csv(inp: str | Path, out: str | Path, generator=None, style: str = "default",
                 reader: str | None = None, batch_size: int = BATCH_SIZE, store=None,
                 config: C2FConfig | None = None) -> int:
    """``python -m core generate --in X.csv --out Y.csv``: impressions for the rows of a CSV.

    Retrieves from the reports in the store (``store``, else the default database when it exists);
    a CSV row whose uid is in the store is never its own neighbour. Same pipeline as the app.

    Args:
        inp: CSV with ``uid``, ``findings`` (``indication``, ``comparison``, ``author`` optional).
        out: CSV to write (``uid, prediction, style, needs_review, flags``).
        generator: a loaded model, or None (retrieval only).
        style: audience style.
        reader: the radiologist: their past reports get a bonus, and their *active* (promoted)
            adapter version's LoRA weights draft when it has some (:func:`reader_adapter`;
            a rejected or unpromoted newer version is never used).
        batch_size: model batch size.
        store: the store to retrieve from (default: the configured database, when it exists).
        config: pipeline settings.

    Returns:
        Exit status: 0 ok, 2 bad input (message on stderr), 1 nothing to retrieve from and no model.
    """
    try:
        style = resolve_style(style)
        reports = read_reports_csv(inp)
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    own_store = None
    if store is None:
        db = settings().db_path
        if Path(db).is_file():
            store = own_store = Store(db)
            store.migrate()
    try:
        outputs = None
        if reader and store is not None:
            outputs = reader_drafts(store, generator, reports, reader, style, batch_size, config)
        if outputs is None:  # the shared pipeline (built only when it drafts)
            try:
                pipeline = pipeline_for(store, generator, config)
            except ImpressionistError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            if pipeline.index is None:
                print("warning: no reports with impressions to retrieve from (import some first); "
                      "the model writes alone and every row is flagged for review", file=sys.stderr)
            adapter = None
            if reader and generator is not None:
                found = reader_adapter(reader, store=store)
                if found is not None:
                    pipeline.use_adapter(f"reader:{reader}", found)
                    adapter = f"reader:{reader}"
            outputs = pipeline.generate(reports, style=style, reader=reader, adapter=adapter,
                                        batch_size=batch_size, progress=True)
    except ImpressionistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if own_store is not None:
            own_store.close()
    write_predictions_csv(out, reports, outputs, style)
    flagged = sum(bool(o.flags.get("needs_review")) for o in outputs)
    print(f"wrote {len(outputs)} impressions ({style}) to {out}; {flagged} flagged for review")
    return 0


def read_reports_csv(path: str | Path) -> list[dict]:
    """Read a CSV with at least ``uid`` and ``findings`` (``indication``, ``comparison``, ``author``
    optional) into report dicts, through the one CSV reader (:func:`core.ingest.common.read_csv_table`).

    Args:
        path: the CSV file.

    Returns:
        Report dicts with ``uid``, ``findings``, ``indication``, ``comparison``, ``author``.

    Raises:
        ImportValidationError: the file is missing, not UTF-8 or malformed, a required column is
            missing, or a uid or findings cell is blank (the message names the file, row and field).
    """
    if Path(path).suffix.lower() in (".jsonl", ".json", ".txt"):
        raise ImportValidationError(str(path), None, None,
                                    "--in takes a CSV (uid, findings, ...); import other formats "
                                    "with `python -m core import` and run generate without --in")
    table = read_csv_table(Path(path), str(path))
    uid_i = table.column(["uid"], required=True, what="uid")
    findings_i = table.column(["findings"], required=True, what="findings")
    col = {name: table.column([name], required=False, what=name)
           for name in ("indication", "comparison", "author", "image")}
    out = []
    for row, cells in table.rows:
        uid, findings = table.cell(cells, uid_i), table.cell(cells, findings_i)
        if not uid:
            raise ImportValidationError(table.display, row, table.header[uid_i], "the uid is blank")
        if not findings:
            raise ImportValidationError(table.display, row, table.header[findings_i],
                                        f"the findings are blank (uid {uid})")
        get = {name: table.cell(cells, i) for name, i in col.items()}
        out.append({"uid": uid, "findings": findings, "indication": get["indication"] or None,
                    "comparison": get["comparison"] or None,
                    "author": get["author"] or get["image"] or None})
    return out



def write_predictions_csv(path: str | Path, reports: Sequence[dict], outputs: Sequence[GenerationOutput],
                          style: str) -> None:
    """Write ``uid, prediction, style, needs_review, flags`` (flags as JSON) to a CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "prediction", "style", "needs_review", "flags"])
        for r, o in zip(reports, outputs):
            w.writerow([r["uid"], o.text, style, int(bool(o.flags.get("needs_review"))),
                        json.dumps(o.flags, sort_keys=True)])
    tmp.replace(path)
