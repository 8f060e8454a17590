"""CheXpert Plus reports CSV (df_chexpert_plus_240401.csv): one row per *image*, 27 columns

    path_to_image, path_to_dcm, frontal_lateral, ap_pa, deid_patient_id,
    patient_report_date_order, report, section_narrative, section_clinical_history,
    section_history, section_comparison, section_technique, section_procedure_comments,
    section_findings, section_impression, section_end_of_impression, section_summary,
    section_accession_number, age, sex, race, ethnicity, interpreter_needed, insurance_type,
    recent_bmi, deceased, split

with report sections in multi-line, often ALL-CAPS cells ("1.LINES AND TUBES: ...\n\n2.NO
PNEUMOTHORAX."), kept whole (whitespace-normalised). Columns are matched case-insensitively;
only section_findings (and section_impression, when an impression is required) must exist.

    findings     section_findings
    impression   section_impression
    indication   the first non-empty of section_indication, section_clinical_history,
                 section_history; the others, when they say something else, go to extra
    comparison   section_comparison
    extra        every other non-empty section_* cell under its column name (narrative,
                 technique, procedure_comments, end_of_impression, summary, accession_number),
                 deid_patient_id, patient_report_date_order, split, and "images"
The ``report`` column (the whole report again, section by section) and the per-image and
demographic columns are not stored.

external_id: a study id column when present (study_id, study), otherwise the study folder of
path_to_image ("train/patient00001/study1/view1_frontal.jpg" -> "train/patient00001/study1"),
or path_to_image itself when it has no folder. CheXpert Plus repeats a study's report on every
image row, so rows with the same id and the same report text become ONE record whose
extra["images"] lists all image paths; the same id with different text is a duplicate-id error.

Many CheXpert Plus reports have no findings section. Like every other format, an empty
findings cell is an error unless ``skip_empty_findings=True`` (the CLI's
--skip-empty-findings), which leaves those rows out and lists their spreadsheet rows in
``ImportedReports.skipped``.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Mapping

from core.errors import ImportValidationError
from core.ingest.common import ReaderContext, ReportRecord, normalize_text, read_csv_table
from core.ingest.generic_csv import resolve_mapping

COLUMNS = {
    "external_id": ("study_id", "study"),
    "findings": ("section_findings",),
    "impression": ("section_impression",),
    "indication": ("section_indication", "section_clinical_history", "section_history"),
    "comparison": ("section_comparison",),
    "author": (),
}
IMAGE_COLUMN = "path_to_image"
SIGNATURE = "section_findings"
SECTION_PREFIX = "section_"
META_COLUMNS = ("deid_patient_id", "patient_report_date_order", "split")


def study_of(image_path: str) -> str:
    """The study folder of a CheXpert image path, or the path itself when it has no folder.

    Args:
        image_path: e.g. "train/patient00001/study1/view1_frontal.jpg".
    Returns:
        e.g. "train/patient00001/study1".
    """
    p = PurePosixPath(image_path.strip().replace("\\", "/"))
    parent = str(p.parent)
    return parent if parent not in ("", ".", "/") else str(p)


def read(path: Path, display: str, ctx: ReaderContext,
         mapping: Mapping[str, str] | None) -> list[ReportRecord]:
    """Read a CheXpert Plus CSV (see the module docstring for ids and merging).

    Args:
        path: the CSV file.
        display: file name for messages.
        ctx: per-file settings.
        mapping: optional overrides of the column names (our field -> their column).
    Returns:
        One record per study, in order of first appearance.
    Raises:
        ImportValidationError: structural problems, missing columns (section_findings, and
            path_to_image when there is no study id column), empty cells, or a study whose
            image rows carry different report text.
    """
    resolved = resolve_mapping(mapping, display)
    table = read_csv_table(path, display)
    idx: dict[str, int | None] = {}
    for name, defaults in COLUMNS.items():
        names = (resolved[name],) if name in resolved else defaults
        required = (name in resolved or name == "findings"
                    or (name == "impression" and ctx.require_impression))
        idx[name] = table.column(names, required=required, what=name) if names else None
    # Every indication-like column present; per row the first non-empty one wins.
    ind_cols = [i for n in ((resolved["indication"],) if "indication" in resolved
                            else COLUMNS["indication"])
                if (i := table.column((n,), required=False, what="indication")) is not None]
    img_i = table.column((IMAGE_COLUMN,), required=idx["external_id"] is None, what="external_id")
    header = table.header
    id_field = header[idx["external_id"]] if idx["external_id"] is not None else IMAGE_COLUMN
    used = {i for i in idx.values() if i is not None}
    # Section text we do not map to a field is kept in extra, never dropped.
    section_cols = [(i, h.lower()) for i, h in enumerate(header)
                    if i not in used and (h.lower().startswith(SECTION_PREFIX) or i in ind_cols)]
    meta_cols = [(i, h.lower()) for i, h in enumerate(header) if h.lower() in META_COLUMNS]

    def cell(cells: list[str], name: str) -> str | None:
        i = idx[name]
        return None if i is None else cells[i]

    by_id: dict[str, ReportRecord] = {}
    for row, cells in table.rows:
        image = cells[img_i].strip() if img_i is not None else ""
        if idx["external_id"] is not None:
            ext = cell(cells, "external_id")
        else:
            if not image:
                raise ImportValidationError(display, row, IMAGE_COLUMN, "empty image path")
            ext = study_of(image)
        indication = next((cells[i] for i in ind_cols if cells[i].strip()), None)
        extra = {h: cells[i].strip() for i, h in meta_cols if cells[i].strip()}
        ind_text = normalize_text(indication)
        for i, h in section_cols:
            text = normalize_text(cells[i])
            if text and text != ind_text:
                extra[h] = text
        extra["images"] = [image] if image else []
        rec = ctx.make(
            row=row, external_id=ext, findings=cell(cells, "findings"),
            impression=cell(cells, "impression"), indication=indication,
            comparison=cell(cells, "comparison"), author=cell(cells, "author"), extra=extra,
            findings_field=header[idx["findings"]],
            impression_field=header[idx["impression"]] if idx["impression"] is not None
            else "impression",
            id_field=id_field)
        if rec is None:
            continue
        first = by_id.get(rec.external_id)
        if first is None:
            by_id[rec.external_id] = rec
        elif _report_text(first) == _report_text(rec):
            first.extra["images"].extend(rec.extra["images"])
        else:
            raise ImportValidationError(
                display, rec.row, id_field,
                f"duplicate id '{rec.external_id}' with a different report (rows {first.row} "
                f"and {rec.row})")
    return list(by_id.values())


def _report_text(rec: ReportRecord) -> tuple:
    """Everything a study's image rows must agree on to be one report."""
    sections = {k: v for k, v in rec.extra.items() if k.startswith(SECTION_PREFIX)}
    return rec.findings, rec.impression, rec.indication, rec.comparison, sections
