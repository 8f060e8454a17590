"""Preference pairs from hand-made feedback: every rule, every drop, weights, held-out slice."""

from __future__ import annotations

import json

import pytest

from core.learning.pairs import FeedbackItem, build_pairs, is_heldout, pairs_for_reader, write_jsonl

FINDINGS = "The heart is normal in size. The lungs are clear. No pleural effusion."
CRIT_FINDINGS = "Small right apical pneumothorax. Calcified granuloma in the left upper lobe."


def fb(id, report_id=1, rating=None, edited=None, ai="No acute cardiopulmonary abnormality.",
       original="Normal chest.", kind="rating", retracts=None, generation_id=None,
       findings=FINDINGS, critical_missed=False, reader_id=7):
    return FeedbackItem(id=id, reader_id=reader_id, report_id=report_id,
                        generation_id=generation_id if generation_id is not None else report_id,
                        kind=kind, rating=rating, edited_text=edited, retracts=retracts,
                        critical_missed=critical_missed, findings=findings, original=original,
                        ai_text=ai)


def kinds(ps):
    return sorted((p.kind, p.chosen, p.rejected) for p in ps.train)


def test_edit_over_draft():
    ps = build_pairs([fb(1, rating=0, edited="No acute disease.")], heldout_fraction=0)
    assert kinds(ps) == [("edit", "No acute disease.", "No acute cardiopulmonary abnormality.")]
    assert ps.train[0].weight == 1.0 and ps.counts["kept_edit"] == 1
    assert ps.counts["equivalent"] == 1  # rating 0 gives no original/AI pair
    assert ps.memory[0]["impression"] == "No acute disease."


def test_original_over_worse_ai_and_ai_over_original_when_better():
    ps = build_pairs([fb(1, report_id=1, rating=-2), fb(2, report_id=2, rating=1)],
                     heldout_fraction=0)
    assert kinds(ps) == [
        ("rating", "No acute cardiopulmonary abnormality.", "Normal chest."),
        ("rating", "Normal chest.", "No acute cardiopulmonary abnormality.")]
    weights = {p.report_id: p.weight for p in ps.train}
    assert weights == {1: 1.0, 2: 0.5}  # the gap: |-2| -> 1.0, 1 -> 0.5


def test_higher_rated_ai_over_lower_rated_ai_of_the_same_report():
    items = [fb(1, rating=-2, ai="Cardiomegaly.", generation_id=10),
             fb(2, rating=1, ai="No acute disease.", generation_id=11)]
    ps = build_pairs(items, heldout_fraction=0)
    ai = [p for p in ps.train if p.kind == "ai_vs_ai"]
    assert [(p.chosen, p.rejected, p.gap, p.weight) for p in ai] == [
        ("No acute disease.", "Cardiomegaly.", 3, 1.5)]
    assert ps.counts["kept_ai_vs_ai"] == 1


def test_critical_involvement_doubles_the_weight():
    flagged = build_pairs([fb(1, rating=-1, critical_missed=True)], heldout_fraction=0)
    assert flagged.train[0].critical and flagged.train[0].weight == 1.0
    # the rejected AI text misses the pneumothorax of the findings; the edit states it
    detected = build_pairs([fb(2, rating=-2, findings=CRIT_FINDINGS, ai="Calcified granuloma.",
                               original="Right pneumothorax. Granuloma.",
                               edited="Small right pneumothorax.")], heldout_fraction=0)
    assert {p.kind: (p.critical, p.weight) for p in detected.train} == {
        "edit": (True, 2.0), "rating": (True, 2.0)}
    assert detected.counts["critical_pairs"] == 2


def test_drops_whitespace_punctuation_edits_retractions_contradictions_duplicates():
    items = [
        # an edit that only changes spacing and punctuation
        fb(1, report_id=1, rating=0, edited="  no acute cardiopulmonary abnormality "),
        # a rating that was retracted
        fb(2, report_id=2, rating=-2),
        fb(3, report_id=2, kind="retraction", retracts=2, rating=None),
        # the same two texts preferred both ways for report 3: the rating says original over
        # AI (and, as two rated AI texts, "Normal chest." over the first draft), the edit the
        # opposite
        fb(4, report_id=3, rating=-1),
        fb(5, report_id=3, rating=0, edited="No acute cardiopulmonary abnormality.",
           ai="Normal chest.", generation_id=30),
        # an exact duplicate: the edit equals the original -> same pair twice
        fb(6, report_id=4, rating=-1, edited="Normal chest."),
        # a skip
        fb(7, report_id=5, kind="skip"),
    ]
    ps = build_pairs(items, heldout_fraction=0)
    c = ps.counts
    assert c["dropped_trivial_edit"] == 1
    assert c["dropped_retracted"] == 1
    assert c["dropped_contradictory"] == 3
    assert c["dropped_duplicate"] == 1
    assert c["skips"] == 1 and c["retractions"] == 1
    assert kinds(ps) == [("edit", "Normal chest.", "No acute cardiopulmonary abnormality.")]
    assert c["kept"] == 1 and c["dropped"] == 6


def test_a_pair_whose_chosen_text_drops_a_critical_finding_is_not_learned():
    ps = build_pairs([fb(1, rating=0, findings=CRIT_FINDINGS, ai="Small right pneumothorax.",
                         edited="Calcified granuloma.")], heldout_fraction=0)
    assert ps.train == [] and ps.counts["dropped_chosen_misses_critical"] == 1


def test_heldout_slice_is_by_report_and_stable():
    items = []
    for report in range(1, 201):
        items.append(fb(2 * report, report_id=report, rating=-1, edited=f"Edit {report}."))
        items.append(fb(2 * report + 1, report_id=report, rating=-2, ai=f"Other draft {report}.",
                        generation_id=1000 + report))
    ps = build_pairs(items, heldout_fraction=0.2)
    train_reports = {p.report_id for p in ps.train}
    held_reports = {p.report_id for p in ps.heldout}
    assert train_reports and held_reports and not train_reports & held_reports
    assert 20 <= len(ps.heldout_reports) <= 60  # ~20% of 200
    assert held_reports <= ps.heldout_reports
    assert not {m["report_id"] for m in ps.memory} & ps.heldout_reports
    assert {r["report_id"] for r in ps.heldout_refs} == ps.heldout_reports
    again = build_pairs(list(reversed(items)), heldout_fraction=0.2)
    assert again.heldout_reports == ps.heldout_reports
    assert all(is_heldout(7, r, 0.2) for r in ps.heldout_reports)
    # a report recorded as held out stays held out even if the hash rule says otherwise
    forced = next(r for r in range(1, 201) if r not in ps.heldout_reports)
    kept = build_pairs(items, heldout_fraction=0.2, heldout_reports={forced})
    assert forced in kept.heldout_reports
    assert forced not in {p.report_id for p in kept.train}


def test_pairs_from_the_store_and_jsonl_export(store, users, cases, tmp_path):
    from core.feedback import annotate
    from core.cli.main import main

    rad = users["rad1"]
    for i in range(8):
        case = annotate.next_case(store, rad)
        annotate.submit_rating(store, rad, case, annotate.Rating(
            rating=-1, edited_text=f"No acute disease, case {i}."))
    undone = annotate.undo_last(store, rad)
    assert undone is not None
    ps = pairs_for_reader(store, rad.id, heldout_fraction=0.25)
    assert ps.counts["ratings"] == 7 and ps.counts["dropped_retracted"] == 1
    assert len(ps.train) + len(ps.heldout) == 14  # an edit pair and a rating pair per case
    assert store.heldout_report_ids(rad.id) == ps.heldout_reports
    out = tmp_path / "pairs.jsonl"
    assert write_jsonl(ps.train, out) == len(ps.train)
    row = json.loads(out.read_text().splitlines()[0])
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    from trl.data_utils import is_conversational

    assert is_conversational(row)
    # the CLI exports the same pairs and prints the counts
    cli_out = tmp_path / "cli.jsonl"
    assert main(["--db", store.path, "pairs", "--reader", "rad1", "--out", str(cli_out),
                 "--heldout-fraction", "0.25"]) == 0
    assert len(cli_out.read_text().splitlines()) == len(ps.train)


def test_pairs_cli_unknown_reader(store, capsys):
    from core.cli.main import main

    assert main(["--db", store.path, "pairs", "--reader", "nobody", "--out", "x.jsonl"]) == 2
    assert "nobody" in capsys.readouterr().err


@pytest.mark.parametrize("rating,expected", [(-2, 1.0), (-1, 0.5), (1, 0.5), (2, 1.0)])
def test_weight_follows_the_rating_gap(rating, expected):
    ps = build_pairs([fb(1, rating=rating)], heldout_fraction=0)
    assert ps.train[0].weight == expected


# -- importing feedback that already exists --------------------------------------------------------
def _csv(path, rows, header="reader,uid,edited_impression,ai_text,rating"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header.split(","))
        w.writerows(rows)
    return path


def test_feedback_import_turns_draft_to_signed_pairs_into_feedback(store, users, cases, tmp_path):
    from core.cli.main import main
    from core.feedback.importing import import_feedback

    reports = store.reports()
    uid = [r["external_id"] for r in reports]
    path = _csv(tmp_path / "signed.csv", [
        ["rad1", uid[0], "No acute disease.", "Cardiomegaly.", "-2"],  # draft given
        ["rad1", uid[1], "Small left effusion.", "", ""],  # linked to the shared draft
        ["rad2", uid[2], "1. Normal.", "Normal heart. Clear lungs.", "0"],
    ])
    result = import_feedback(store, path, actor="test")
    assert (result.imported, result.skipped, result.drafts_stored,
            result.linked_to_shared_draft) == (3, 0, 2, 1)
    ps = pairs_for_reader(store, users["rad1"].id, heldout_fraction=0)
    assert sorted(p.chosen for p in ps.train if p.kind == "edit") == [
        "No acute disease.", "Small left effusion."]
    assert {m["impression"] for m in ps.memory} == {"No acute disease.", "Small left effusion."}
    # imported drafts never enter anyone's queue
    gens = store.generations_for_report(reports[0]["id"])
    assert [g["style"] for g in gens if g["model"] == "imported-draft"] == ["imported"]
    # importing the same file again writes nothing
    again = import_feedback(store, path)
    assert (again.imported, again.skipped) == (0, 3)
    assert main(["--db", store.path, "feedback", "import", str(path)]) == 0


def test_an_imported_answer_revises_the_one_standing_for_that_reader_and_report(
        store, users, cases, tmp_path):
    """One answer per (reader, report) counts: an import revises an app rating, a later import
    an earlier one (and a later row of one file the earlier row), and an app correction an
    imported answer; importing the same files again changes nothing."""
    from core.feedback import annotate
    from core.feedback.importing import import_feedback

    rad = users["rad1"]
    case = annotate.next_case(store, rad)
    in_app = annotate.submit_rating(store, rad, case, annotate.Rating(
        rating=-2, edited_text="App: small left effusion."))
    other = next(r for r in store.reports() if r["id"] != case.report_id)
    first = _csv(tmp_path / "first.csv", [
        ["rad1", case.external_id, "Import: no acute disease.", "", "2"],
        ["rad1", other["external_id"], "File one: cardiomegaly.", "Draft A.", "-1"]])
    second = _csv(tmp_path / "second.csv", [
        ["rad1", other["external_id"], "File two, row one: normal heart.", "Draft B.", "0"],
        ["rad1", other["external_id"], "File two, row two: clear lungs.", "Draft B.", "1"]])

    def standing() -> dict[int, list[str]]:
        rows = store.df("SELECT report_id, edited_text FROM current_feedback WHERE "
                        "reader_id = ? AND study_id IS NULL ORDER BY id", [rad.id])
        return rows.groupby("report_id")["edited_text"].apply(list).to_dict()

    assert import_feedback(store, first).imported == 2
    assert import_feedback(store, second).imported == 2
    want = {case.report_id: ["Import: no acute disease."],
            other["id"]: ["File two, row two: clear lungs."]}
    assert standing() == want
    imported = store.df("SELECT id, revises FROM feedback WHERE source = 'import' ORDER BY id")
    assert in_app in set(imported["revises"])  # the app rating stays on record, revised
    # re-importing either file is idempotent: nothing written, the same answers stand
    assert (import_feedback(store, first).imported, import_feedback(store, second).imported) \
        == (0, 0)
    assert standing() == want
    ps = pairs_for_reader(store, rad.id, heldout_fraction=0, record_heldout=False)
    assert sorted(p.chosen for p in ps.train if p.kind == "edit") == [
        "File two, row two: clear lungs.", "Import: no acute disease."]
    # a rating in the app (a correction) of a case answered by import revises the import
    fid = annotate.save_rating(store, rad, other["id"], None, None, annotate.Rating(
        rating=0, edited_text="App again: normal chest."))
    assert store.get_feedback(fid)["revises"] == int(imported["id"].iloc[-1])
    assert standing()[other["id"]] == ["App again: normal chest."]


@pytest.mark.parametrize("row,field,message", [
    (["nobody", "U", "x", "", ""], "reader", "no user named 'nobody'"),
    (["coord", "U", "x", "", ""], "reader", "coordinator"),
    (["rad1", "no-such-uid", "x", "", ""], "uid", "no report with uid 'no-such-uid'"),
    (["rad1", "U", "", "", ""], "edited_impression", "empty"),
    (["rad1", "U", "x", "", "5"], "rating", "outside -2..2"),
    (["rad1", "U", "x", "", "bad"], "rating", "not a whole number"),
])
def test_feedback_import_rejects_bad_rows_naming_file_row_field(store, users, cases, tmp_path,
                                                                row, field, message):
    from core.feedback.importing import import_feedback
    from core.errors import ImportValidationError

    uid = store.reports()[0]["external_id"]
    good = ["rad1", uid, "No acute disease.", "", ""]
    path = _csv(tmp_path / "bad.csv", [good, [uid if c == "U" else c for c in row]])
    before = store.count_feedback()
    with pytest.raises(ImportValidationError) as err:
        import_feedback(store, path)
    assert err.value.row == 3 and err.value.field == field
    assert message in str(err.value) and "bad.csv" in str(err.value)
    assert store.count_feedback() == before  # nothing written


def test_feedback_import_needs_the_required_columns(store, users, cases, tmp_path, capsys):
    from core.cli.main import main

    path = _csv(tmp_path / "cols.csv", [["rad1", "x"]], header="reader,uid")
    assert main(["--db", store.path, "feedback", "import", str(path)]) == 2
    assert "missing required column" in capsys.readouterr().err


def test_memory_holds_edits_and_drafts_signed_off_unedited_but_not_rejected_or_unsafe_ones():
    items = [
        fb(1, report_id=1, rating=0, ai="No acute disease, rad wording."),     # equivalent: kept
        fb(2, report_id=2, rating=2, ai="Clear lungs. Normal heart."),          # better: kept
        fb(3, report_id=3, rating=-1, ai="Rated worse, not edited."),          # worse: not
        fb(4, report_id=4, rating=0, ai="Flagged.", critical_missed=True),     # flagged: not
        fb(5, report_id=5, rating=0, ai="Granuloma only.", findings=CRIT_FINDINGS),  # misses PTX
        fb(6, report_id=6, rating=1, edited="My own words.", ai="AI words."),  # edit: the edit
    ]
    memory = {m["report_id"]: m["impression"]
              for m in build_pairs(items, heldout_fraction=0).memory}
    assert memory == {1: "No acute disease, rad wording.", 2: "Clear lungs. Normal heart.",
                      6: "My own words."}
    # a held-out report never enters the memory, signed off or not
    held = [i for i in range(1, 400) if is_heldout(7, i, 0.5)][:3]
    ps = build_pairs([fb(10 + i, report_id=i, rating=1) for i in held], heldout_fraction=0.5)
    assert ps.memory == []
