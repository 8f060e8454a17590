"""Property/fuzz tests of every importer (issue 7), end to end into the database.

For IU X-ray, MIMIC-CXR text, CheXpert Plus, generic CSV, JSONL and the feedback CSV: random text
with control characters, HTML/script, SQL-looking strings, huge fields, wrong encodings (Latin-1,
UTF-16) and files cut at any byte. Each import either succeeds and the database holds exactly the
(whitespace-normalised) text, or raises an ``ImpressionistError`` naming the file (and the row
where there is one), and then the database is exactly as before: never another exception, never
a half-written import.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ImportValidationError, ImpressionistError
from core.ingest.common import normalize_text

FRAGMENTS = [",", '"', "'", "\n", "\r\n", "\t", "\x00", "\x0b", "\x1b[31m", "\x85", "\u2028",
             "\ufeff", "\u202e", "\u00a0", "XXXX", "___", "caf\u00e9", "\u80ba\u708e",
             "\U0001f9ea", "<script>alert(1)</script>", "</td><img src=x onerror=alert(1)>",
             "'; DROP TABLE reports; --", "Robert'); DELETE FROM feedback;--", "%s %d {0} ${x}",
             "NULL", "\\x00", "\\", "{\"a\": 1}", "FINDINGS:", "IMPRESSION:"]
nasty = st.lists(st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                   max_size=12),
                           st.sampled_from(FRAGMENTS)),
                 min_size=1, max_size=8).map("".join)
# text that normalises to something (a report needs findings)
report_text = st.tuples(st.sampled_from(["Heart", "Lungs", "No", "1."]), nasty).map(" ".join)
huge = st.integers(min_value=20_000, max_value=120_000).map(lambda n: ("Lungs clear. " * n)[:n])
FUZZ = settings(max_examples=15, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
_ids = itertools.count()


def _snapshot(store) -> tuple:
    return (store.count_reports(), len(store.imports(limit=10_000)), store.count_feedback(),
            len(store.audit_log(limit=100_000)))


def _import(store, path, fmt: str):
    """import_file, asserting the error contract; returns the result or the error."""
    from core.ingest.reports import import_file

    before = _snapshot(store)
    try:
        return import_file(store, path, fmt=fmt, actor="fuzz")
    except ImpressionistError as err:
        assert str(path) in str(err), err
        if isinstance(err, ImportValidationError):
            assert err.file.startswith(str(path))
        str(err).encode("utf-8")  # printable: no lone surrogates from bad bytes
        assert _snapshot(store) == before, "a failed import changed the database"
        return err


def _csv_bytes(header, rows, encoding="utf-8") -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    return buf.getvalue().encode(encoding, errors="replace")


def _stored(store, ids) -> dict[str, dict]:
    return {r["external_id"]: r for r in store.reports_by_external_id(list(ids))}


def _check_roundtrip(store, result, expected: dict[str, tuple[str, str]]):
    """Imported: each id's findings/impression in the database == normalize_text(input)."""
    if isinstance(result, Exception):
        assert isinstance(result, ImportValidationError)
        # the only acceptable rejection of well-formed text: it normalises to nothing
        assert result.field is not None and ("empty" in result.problem
                                             or "characters" in result.problem), result
        return
    got = _stored(store, expected)
    assert set(got) == set(expected)
    for ext, (findings, impression) in expected.items():
        assert got[ext]["findings"] == normalize_text(findings)
        assert got[ext]["impression"] == (normalize_text(impression) or None)


# -- each format round-trips nasty text into the database --------------------------------------
@FUZZ
@given(rows=st.lists(st.tuples(report_text, report_text, nasty), min_size=1, max_size=4))
def test_iu_xray_roundtrip(store, tmp_path, rows):
    n = next(_ids)
    data = [[f"iu{n}-{i}", "normal;" + m, m, "Xray Chest PA and Lateral", m, "None.", f, imp]
            for i, (f, imp, m) in enumerate(rows)]
    path = tmp_path / f"iu{n}.csv"
    path.write_bytes(_csv_bytes(["uid", "MeSH", "Problems", "image", "indication", "comparison",
                                 "findings", "impression"], data))
    result = _import(store, path, "iu-xray")
    _check_roundtrip(store, result, {d[0]: (d[6], d[7]) for d in data})


@FUZZ
@given(rows=st.lists(st.tuples(report_text, report_text, nasty), min_size=1, max_size=4))
def test_chexpert_plus_roundtrip(store, tmp_path, rows):
    n = next(_ids)
    data = [[f"train/patient{n}/study{i}/view1_frontal.jpg", f, imp, h]
            for i, (f, imp, h) in enumerate(rows)]
    path = tmp_path / f"cx{n}.csv"
    path.write_bytes(_csv_bytes(["path_to_image", "section_findings", "section_impression",
                                 "section_clinical_history"], data))
    result = _import(store, path, "chexpert-plus")
    _check_roundtrip(store, result, {f"train/patient{n}/study{i}": (d[1], d[2])
                                     for i, d in enumerate(data)})


@FUZZ
@given(rows=st.lists(st.tuples(report_text, report_text), min_size=1, max_size=4))
def test_generic_csv_roundtrip_into_the_database(store, tmp_path, rows):
    n = next(_ids)
    data = [[f"g{n}-{i}", f, imp] for i, (f, imp) in enumerate(rows)]
    path = tmp_path / f"g{n}.csv"
    path.write_bytes(_csv_bytes(["id", "findings", "impression"], data))
    _check_roundtrip(store, _import(store, path, "csv"), {d[0]: (d[1], d[2]) for d in data})


# JSON strings may hold lone surrogates ("\udc80" escapes): they are not text a report can hold
jsonl_text = st.one_of(report_text, st.text(max_size=30).map(lambda s: "Lungs " + s),
                       st.sampled_from(["\udc80", "\ud800x", "a\udfff"]).map(
                           lambda s: "Lungs " + s))


@FUZZ
@given(rows=st.lists(st.tuples(jsonl_text, jsonl_text), min_size=1, max_size=4),
       ascii_only=st.booleans())
def test_jsonl_roundtrip(store, tmp_path, rows, ascii_only):
    n = next(_ids)
    objs = [{"id": f"j{n}-{i}", "findings": f, "impression": imp, "note": "<b>x</b>"}
            for i, (f, imp) in enumerate(rows)]
    path = tmp_path / f"j{n}.jsonl"
    text = "\n".join(json.dumps(o, ensure_ascii=True) for o in objs)
    if not ascii_only:
        try:
            text = "\n".join(json.dumps(o, ensure_ascii=False) for o in objs)
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = "\n".join(json.dumps(o, ensure_ascii=True) for o in objs)
    path.write_text(text, encoding="utf-8")
    result = _import(store, path, "jsonl")
    if any(not t.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == t
           for o in objs for t in (o["findings"], o["impression"])):
        # a lone surrogate is not text: refused, naming the line and the field
        assert isinstance(result, ImportValidationError) and "surrogate" in result.problem
        assert result.row is not None and result.field in ("findings", "impression")
        return
    _check_roundtrip(store, result, {o["id"]: (o["findings"], o["impression"]) for o in objs})


no_colon = report_text.map(lambda s: s.replace(":", " ").replace("\r", " "))


@FUZZ
@given(findings=no_colon, impression=no_colon, indication=nasty)
def test_mimic_cxr_roundtrip(store, tmp_path, findings, impression, indication):
    n = next(_ids)
    path = tmp_path / f"s{n}.txt"
    path.write_text(f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND "
                    f"LAT)\n\n INDICATION:  {indication.replace(':', ' ')}\n\n FINDINGS: \n "
                    f"{findings}\n\n IMPRESSION: \n {impression}\n", encoding="utf-8")
    result = _import(store, path, "mimic-cxr")
    _check_roundtrip(store, result, {f"s{n}": (findings, impression)})


@FUZZ
@given(body=nasty)
def test_mimic_cxr_any_text_never_crashes(store, tmp_path, body):
    path = tmp_path / f"s{next(_ids)}.txt"
    path.write_text(body, encoding="utf-8")
    _import(store, path, "mimic-cxr")


# -- wrong encodings, truncation and huge fields, for every file format -------------------------
def _write_format(fmt: str, tmp_path, n: int, rows: list[tuple[str, str]],
                  encoding: str = "utf-8"):
    if fmt == "iu-xray":
        p = tmp_path / f"e{n}.csv"
        p.write_bytes(_csv_bytes(["uid", "MeSH", "Problems", "image", "indication", "comparison",
                                  "findings", "impression"],
                                 [[f"e{n}-{i}", "normal", "normal", "Xray", "", "", f, imp]
                                  for i, (f, imp) in enumerate(rows)], encoding))
    elif fmt == "chexpert-plus":
        p = tmp_path / f"e{n}.csv"
        p.write_bytes(_csv_bytes(["path_to_image", "section_findings", "section_impression"],
                                 [[f"train/p{n}/s{i}/v.jpg", f, imp]
                                  for i, (f, imp) in enumerate(rows)], encoding))
    elif fmt == "csv":
        p = tmp_path / f"e{n}.csv"
        p.write_bytes(_csv_bytes(["id", "findings", "impression"],
                                 [[f"e{n}-{i}", f, imp] for i, (f, imp) in enumerate(rows)],
                                 encoding))
    elif fmt == "jsonl":
        p = tmp_path / f"e{n}.jsonl"
        p.write_bytes("\n".join(json.dumps({"id": f"e{n}-{i}", "findings": f, "impression": imp},
                                           ensure_ascii=False)
                                for i, (f, imp) in enumerate(rows)).encode(encoding, "replace"))
    else:  # mimic-cxr: one file
        p = tmp_path / f"e{n}.txt"
        f, imp = rows[0]
        p.write_bytes(f"FINDINGS: {f}\nIMPRESSION: {imp}\n".encode(encoding, "replace"))
    return p


FILE_FORMATS = ["iu-xray", "chexpert-plus", "csv", "jsonl", "mimic-cxr"]
latin_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), min_size=1,
                     max_size=40).map(lambda s: "Heart " + s.replace(":", " "))


@pytest.mark.parametrize("fmt", FILE_FORMATS)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(latin_text, latin_text), min_size=1, max_size=3),
       encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-16-le"]))
def test_wrong_encoding_is_refused_with_file_and_row(store, tmp_path, fmt, rows, encoding):
    path = _write_format(fmt, tmp_path, next(_ids), rows, encoding)
    result = _import(store, path, fmt)
    if isinstance(result, Exception):
        assert isinstance(result, ImportValidationError)
        if "UTF-8" in result.problem:
            assert result.row is not None and "re-save" in result.problem
    else:
        # only possible when the bytes happen to be valid UTF-8 (e.g. plain ASCII text)
        path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("fmt", FILE_FORMATS)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=5_000),
       junk=st.sampled_from([b"", b'"', b",", b"\n", b"\xe9", b"\x00", b"{", b"\xff\xfe"]))
def test_truncated_file_imports_a_prefix_or_fails_cleanly(store, tmp_path, fmt, cut, junk):
    n = next(_ids)
    rows = [(f"Finding {i}, with \"quotes\", <i>tags</i>", f"Impression {i}.") for i in range(30)]
    full = _write_format(fmt, tmp_path, n, rows)
    data = full.read_bytes()
    path = full.with_name("cut-" + full.name)
    path.write_bytes(data[:cut % (len(data) + 1)] + junk)
    result = _import(store, path, fmt)
    if isinstance(result, Exception):
        if isinstance(result, ImportValidationError) and result.row is not None:
            lines = len(re.findall(rb"\r\n|\r|\n", path.read_bytes())) + 1
            assert 1 <= result.row <= lines
        return
    assert result.imported <= (1 if fmt == "mimic-cxr" else 30)


@pytest.mark.parametrize("fmt", FILE_FORMATS)
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(big=huge)
def test_huge_fields_import_exactly_or_fail_cleanly(store, tmp_path, fmt, big):
    n = next(_ids)
    path = _write_format(fmt, tmp_path, n, [(big, "Normal.")])
    result = _import(store, path, fmt)
    if isinstance(result, Exception):
        assert isinstance(result, ImportValidationError) and "characters" in str(result)
        return
    stored = store.reports_by_external_id(
        [f"e{n}-0" if fmt in ("iu-xray", "csv", "jsonl") else
         f"train/p{n}/s0" if fmt == "chexpert-plus" else f"e{n}"])
    assert [r["findings"] for r in stored] == [normalize_text(big)]


# -- the feedback CSV importer -------------------------------------------------------------------
rating_cells = st.one_of(st.sampled_from(["", "2", "-2", "0", "1.0", "3", "1.5", "nan", "inf",
                                          "-inf", "1e309", "0x1", "\u0661", "' OR 1=1 --",
                                          "<script>", "\x00"]),
                         st.text(max_size=6))


@FUZZ
@given(rows=st.lists(st.tuples(st.sampled_from(["rad1", "rad2", "coord", "nobody", "",
                                                "rad1'; --"]),
                               st.integers(min_value=0, max_value=13), report_text,
                               st.one_of(st.none(), nasty), rating_cells),
                     min_size=1, max_size=5),
       encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16"]))
def test_feedback_import_fuzz(store, users, cases, tmp_path, rows, encoding):
    from core.feedback.importing import import_feedback

    ids = [c["external_id"] for c in cases]
    data = [[reader, ids[k] if k < len(ids) else f"missing-{k}", edited, ai or "", rating]
            for reader, k, edited, ai, rating in rows]
    path = tmp_path / f"fb{next(_ids)}.csv"
    path.write_bytes(_csv_bytes(["reader", "uid", "edited_impression", "ai_text", "rating"],
                                data, encoding))
    before = _snapshot(store)
    try:
        result = import_feedback(store, path, actor="fuzz")
    except ImpressionistError as err:
        assert isinstance(err, ImportValidationError), err
        assert err.file == str(path) and str(err).startswith(str(path))
        if err.row is not None:
            assert 1 <= err.row <= len(rows) + 1
        str(err).encode("utf-8")
        assert _snapshot(store) == before, "a failed feedback import changed the database"
        return
    # imported: every row's edit is in the database exactly (normalised), or stored as
    # "no edit" when it has the same words as its draft
    assert result.imported + result.skipped == result.rows == len(rows)
    got = store.df("SELECT u.username, r.external_id, f.edited_text FROM feedback f JOIN readers "
                   "u ON u.id = f.reader_id JOIN reports r ON r.id = f.report_id "
                   "WHERE f.source = 'import'")
    stored = set(zip(got["username"], got["external_id"], got["edited_text"].fillna("")))
    for reader, uid, edited, _ai, _ in data:
        assert (reader, uid, normalize_text(edited)) in stored or (reader, uid, "") in stored


def test_feedback_rating_overflow_and_jsonl_surrogate_are_clean_errors(store, users, cases,
                                                                      tmp_path):
    """Found by the fuzz tests: a rating of "inf" raised OverflowError, and a JSONL lone
    surrogate reached DuckDB (a raw TransactionException)."""
    from core.feedback.importing import import_feedback

    uid = cases[0]["external_id"]
    for bad in ("inf", "-inf", "1e309"):
        path = tmp_path / "fb.csv"
        path.write_text(f"reader,uid,edited_impression,rating\nrad1,{uid},Signed.,{bad}\n")
        with pytest.raises(ImportValidationError, match="not a whole number") as info:
            import_feedback(store, path)
        assert (info.value.row, info.value.field) == (2, "rating")
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a", "findings": "ok", "impression": "fine"}\n'
                    '{"id": "b", "findings": "Lungs \\udc80 clear", "impression": "ok"}\n')
    err = _import(store, path, "jsonl")
    assert isinstance(err, ImportValidationError) and (err.row, err.field) == (2, "findings")
    assert store.reports_by_external_id(["a", "b"]) == []


# -- no section text is dropped silently (issue 15) ---------------------------------------------
# A MIMIC-CXR report is built from the real headers (tests/fixtures/mimic_cxr), sub-headings the
# importer does not know, mixed-case and ALL-CAPS sentences and blank lines. Property: every line
# that is not a header (nor the "FINAL REPORT" title or a ruler) ends up, whitespace-normalised,
# in a stored field of the report, the field its header names where it names one; or the report
# is reported as skipped for having no findings. Nothing else.
MIMIC_HEADERS = {  # header as dictated -> the field its text must land in (None: any field)
    "FINDINGS": "findings", "Findings": "findings", "FINDNGS": "findings",
    "FINDINGS AND IMPRESSION": "findings", "FINDINGS/IMPRESSION": "findings",
    "IMPRESSION": "impression", "Impression": "impression", "CONCLUSION": "impression",
    "IMPRESSON": "impression", "FINAL IMPRESSION": "impression",
    "INDICATION": "indication", "HISTORY": "indication", "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication", "PERTINENT HISTORY": "indication",
    "COMPARISON": "comparison", "COMPARISON EXAM": "comparison",
    "REFERENCE EXAM": "comparison", "COMPARISONS": "comparison",
    "EXAMINATION": None, "TYPE OF EXAMINATION": None, "TECHNIQUE": None, "NOTIFICATION": None,
    "RECOMMENDATION(S)": None, "WET READ": None, "ADDENDUM": None,
}
EXAM_TITLES = ["CHEST, TWO VIEWS", "PORTABLE AP CHEST", "CHEST (PA AND LAT)",
               "PA AND LATERAL VIEWS OF THE CHEST"]
SUB_WORDS = ["HEART", "MEDIASTINUM", "LUNGS", "PLEURA", "ETT", "NG", "TUBE", "OSSEOUS", "BONES",
             "SOFT", "TISSUES", "LINES", "AND", "UPPER", "ABDOMEN", "HILA", "CARDIAC", "AIRWAYS"]
subheading = st.lists(st.sampled_from(SUB_WORDS), min_size=1, max_size=3).map(" ".join)
line_text = st.text(st.characters(codec="utf-8", min_codepoint=0x20, max_codepoint=0x2FF,
                                  exclude_categories=("Cs", "Zl", "Zp", "Cc")), max_size=30)
sentence = st.tuples(st.sampled_from(["The", "There", "No", "Mild", "1.", "Heart", "___"]),
                     line_text).map(" ".join)
caps_sentence = st.lists(st.sampled_from(SUB_WORDS + ["NO", "ACUTE", "CHANGE", "2.", "___"]),
                         min_size=1, max_size=6).map(lambda w: " ".join(w) + ".")
content_line = st.one_of(sentence, caps_sentence,
                         st.tuples(subheading, sentence).map(": ".join))
block = st.tuples(st.sampled_from(sorted(MIMIC_HEADERS)), st.booleans(),
                  st.lists(st.one_of(content_line, st.just("")), max_size=4))


def _stored_report(store, external_id: str) -> dict:
    [row] = store.reports_by_external_id([external_id])
    report = store.get_report(row["id"])
    extra = report["extra"]
    report["extra"] = json.loads(extra) if isinstance(extra, str) else extra
    return report


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(title=st.one_of(st.none(), st.sampled_from(EXAM_TITLES)),
       title_lines=st.lists(content_line, max_size=2),
       preamble=st.lists(content_line, max_size=2), blocks=st.lists(block, max_size=6))
def test_mimic_no_section_text_is_dropped(store, tmp_path, title, title_lines, preamble,
                                          blocks):
    stem = f"s{next(_ids)}"
    lines = [" ______________________________________________________________________________",
             "                                 FINAL REPORT"]
    expect: list[tuple[str, str | None]] = [(normalize_text(t), None) for t in preamble]
    lines += [f" {t}" for t in preamble]
    if title is not None:  # an exam title before anything else titles the findings
        lines.append(f" {title}:")
        lines += [f" {t}" for t in title_lines]
        expect += [(normalize_text(t), "findings") for t in title_lines]
    for header, inline, texts in blocks:
        field = MIMIC_HEADERS[header]
        if inline and texts:  # text on the header line itself: " FINDINGS:  The lungs ..."
            lines.append(f" {header}:  {texts[0]}")
            texts = texts[1:]
            expect.append((normalize_text(lines[-1].split(":", 1)[1]), field))
        else:
            lines.append(f" {header}: ")
        lines += [f" {t}" for t in texts]
        expect += [(normalize_text(t), field) for t in texts]
    path = tmp_path / f"{stem}.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = _import_flags(store, path, skip_empty_findings=True, require_impression=False)
    assert not isinstance(result, Exception), result
    if result.empty_findings:
        # reported, by file, and only when the findings really are empty
        assert result.skipped_where == (path.name,) and result.imported == 0
        assert not any(text for text, field in expect if field == "findings")
        return
    report = _stored_report(store, stem)
    stored = _strings({k: report[k] for k in ("findings", "impression", "indication",
                                              "comparison", "extra")})
    for text, field in expect:
        if not text:
            continue
        if field is None:
            assert any(text in s for s in stored), (text, lines)
        else:
            assert text in (report[field] or ""), (text, field, lines)


def _import_flags(store, path, **flags):
    """import_file with flags, asserting the all-or-nothing contract like ``_import``."""
    from core.ingest.reports import import_file

    before = _snapshot(store)
    try:
        return import_file(store, path, actor="fuzz", **flags)
    except ImpressionistError as err:
        assert _snapshot(store) == before, "a failed import changed the database"
        return err


CHEXPERT_COLUMNS = [
    "path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
    "patient_report_date_order", "report", "section_narrative", "section_clinical_history",
    "section_history", "section_comparison", "section_technique", "section_procedure_comments",
    "section_findings", "section_impression", "section_end_of_impression", "section_summary",
    "section_accession_number", "age", "sex", "race", "ethnicity", "interpreter_needed",
    "insurance_type", "recent_bmi", "deceased", "split"]
SECTION_COLUMNS = [c for c in CHEXPERT_COLUMNS if c.startswith("section_")]
caps_cell = st.one_of(
    st.just(""), st.just(" \n "),
    st.lists(st.one_of(caps_sentence, st.tuples(subheading, caps_sentence).map(": ".join),
                       st.just("")), min_size=1, max_size=4).map("\n".join))
study = st.tuples(st.integers(min_value=1, max_value=3),
                  st.fixed_dictionaries({c: caps_cell for c in SECTION_COLUMNS}))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(studies=st.lists(study, min_size=1, max_size=4))
def test_chexpert_plus_no_section_text_is_dropped(store, tmp_path, studies):
    """27 columns, one row per image, multi-line ALL-CAPS cells, some studies without
    findings: every section cell is stored (a field or extra) or its row is reported skipped,
    by the row number a spreadsheet shows."""
    n = next(_ids)
    rows, expected_skips, kept = [], [], {}
    for k, (images, cells) in enumerate(studies):
        sid = f"train/patient{n:05d}/study{k}"
        for v in range(images):
            row = {c: "" for c in CHEXPERT_COLUMNS}
            row.update(cells, path_to_image=f"{sid}/view{v + 1}.jpg", age="50.0", split="train",
                       report="\n\n".join(cells.values()))
            rows.append([row[c] for c in CHEXPERT_COLUMNS])
            if normalize_text(cells["section_findings"]):
                kept[sid] = cells
            else:
                expected_skips.append(len(rows) + 1)  # header = row 1
    path = tmp_path / f"df_chexpert_plus_{n}.csv"
    path.write_bytes(_csv_bytes(CHEXPERT_COLUMNS, rows))
    result = _import_flags(store, path, skip_empty_findings=True, require_impression=False)
    assert not isinstance(result, Exception), result
    assert result.rows == len(rows) and list(result.skipped_where) == expected_skips
    assert result.imported == len(kept)
    for sid, cells in kept.items():
        report = _stored_report(store, sid)
        assert report["findings"] == normalize_text(cells["section_findings"])
        assert report["impression"] == (normalize_text(cells["section_impression"]) or None)
        stored = _strings({k: report[k] for k in ("findings", "impression", "indication",
                                                  "comparison", "extra")})
        for column, text in cells.items():
            if normalize_text(text):
                assert normalize_text(text) in stored, (column, text)
