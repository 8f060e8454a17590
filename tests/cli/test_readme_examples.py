"""Every command-line example in README.md's code blocks runs and succeeds, in a scratch folder.

The examples run through bash, as pasted by a reader (pipes, loops, continuation lines), from a
scratch working folder with a fresh database (``IMPRESSIONIST_DATA``), with ``python`` on the
PATH being this interpreter. The files they name are written first, small and made up, in the
real layouts. Two kinds of preparation stand for what happens between the commands in real
life, through the same core calls the app and the nightly job make: radiologists rating the
study, and the nightly job having promoted two adapter versions (the README's ``nightly`` finds
too little feedback to train, as it should with a handful of rows).

An example that the README marks as needing the model, a GPU or hours runs in a small variant
(same verb, a tiny random model, one step) or is skipped; :data:`VARIANTS` says which and why,
and the test checks the mark is in the README next to it. Every other example runs as written.
"""

from __future__ import annotations

import pytest

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

# README example -> (the mark the README shows next to it, the command run instead or None to
# skip, why).
VARIANTS: dict[str, tuple[str, str | None, str]] = {
    "python -m core generate --limit 500": (
        "the model writes (make setup)",
        "IMPRESSIONIST_MODEL={tiny} python -m core generate --limit 500",
        "a tiny random checkpoint stands for the embedded model, which make setup prepares"),
    "python -m core generate --in cases.csv --out predictions.csv --style brief": (
        "the model writes",
        "IMPRESSIONIST_MODEL={tiny} python -m core generate --in cases.csv --out predictions.csv "
        "--style brief",
        "a tiny random checkpoint stands for the embedded model, which make setup prepares"),
    "python -m core train-sft --max-steps 500": (
        "needs the model: hours on a CPU",
        "python -m core train-sft --max-steps 1 --max-examples 8 --eval-examples 0 --quiet "
        "--model {tiny}",
        "one SFT step of a tiny random model instead of 500 steps of the embedded one"),
    "accelerate launch --multi_gpu --num_processes 4 -m core nightly --quiet": (
        "needs the GPUs", None,
        "needs 4 GPUs; tests/learning/test_nightly.py runs it with two CPU processes under torchrun"),
    "IMPRESSIONIST_MODEL=/models/Llama-3.1-8B-Instruct python -m core generate --limit 1000 "
    "--llm auto": (
        "any local Hugging Face checkpoint",
        "IMPRESSIONIST_MODEL={tiny} python -m core generate --limit 1000 --llm auto",
        "a tiny random checkpoint stands for the 8B one"),
}


def readme_examples() -> list[tuple[str, str]]:
    """(command, the README text just before it) for each line of a bash or cron code block
    that runs the CLI, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.finditer(r"```(bash|cron)\n(.*?)```", text, re.S):
        kind, body = block.group(1), block.group(2).replace("\\\n", " ")
        for line in body.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip() if kind == "bash" else line.strip()
            command = re.sub(r"\s+", " ", command)
            if "-m core" not in command:
                continue
            if kind == "cron":  # five time fields; cron escapes % as \%
                command = command.split(None, 5)[5].replace("\\%", "%")
            start = text.index(line.split("\\")[0].strip()[:40], block.start())
            out.append((command, text[max(0, block.start() - 400):start + len(line)]))
    return out


def write_inputs(work: Path) -> None:
    """The files the examples name, small and in each format's real layout."""
    from core.ingest.demo import synthetic_reports

    iu = work.parent / "shared" / "data" / "iu_xray" / "reports.csv"
    iu.parent.mkdir(parents=True)
    with iu.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings",
                    "impression"])
        for i, r in enumerate(synthetic_reports(120, seed=7), start=1):
            w.writerow([i, "normal", "normal", "Xray Chest PA and Lateral", "Cough.", "None.",
                        r.findings, r.impression])
    for n, (findings, impression) in enumerate([
            ("The lungs are clear. No pleural effusion or pneumothorax.", "No acute process."),
            ("Small left pleural effusion. Heart size is normal.", "Small left effusion.")]):
        f = work / "mimic_reports" / "files" / "p10" / f"p1000003{n}" / f"s5000000{n}.txt"
        f.parent.mkdir(parents=True)
        f.write_text(f"                                 FINAL REPORT\n"
                     f" EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  ___F with cough\n\n"
                     f" COMPARISON:  None.\n\n FINDINGS:\n\n {findings}\n\n"
                     f" IMPRESSION:\n\n {impression}\n", encoding="utf-8")
    columns = ["path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
               "patient_report_date_order", "report", "section_narrative",
               "section_clinical_history", "section_history", "section_comparison",
               "section_technique", "section_procedure_comments", "section_findings",
               "section_impression", "section_end_of_impression", "section_summary",
               "section_accession_number", "age", "sex", "race", "ethnicity",
               "interpreter_needed", "insurance_type", "recent_bmi", "deceased", "split"]
    with (work / "df_chexpert_plus.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        for view in ("view1_frontal", "view2_lateral"):  # one row per image
            w.writerow({c: "" for c in columns} | {
                "path_to_image": f"train/patient00001/study1/{view}.jpg",
                "deid_patient_id": "patient00001", "patient_report_date_order": "1",
                "section_clinical_history": "SHORTNESS OF BREATH.",
                "section_findings": "1.LINES AND TUBES: NONE.\n\n2.NO PNEUMOTHORAX. NO EFFUSION.",
                "section_impression": "NO ACUTE CARDIOPULMONARY PROCESS.", "split": "train"})
    (work / "export.csv").write_text(
        "ACCESSION,FINDINGS_TEXT,impression\n"
        "A-1,Mild cardiomegaly. No edema.,Mild cardiomegaly.\n"
        "A-2,Right lower lobe opacity.,Right lower lobe pneumonia.\n", encoding="utf-8")
    (work / "cases.csv").write_text(
        "uid,findings,impression\n"
        "c1,Small left pleural effusion. No pneumothorax.,Small left pleural effusion.\n"
        "c2,Heart size normal. Lungs are clear.,No acute cardiopulmonary process.\n",
        encoding="utf-8")
    (work / "signed_reports.csv").write_text(
        "reader,uid,ai_text,edited_impression,rating\n"
        + "".join(f"dr_lee,{i},No acute process.,No acute cardiopulmonary abnormality.,-1\n"
                  for i in range(1, 6)), encoding="utf-8")


def promote_two_versions(db: Path) -> None:
    """What two nightly runs would have left for dr_lee: v1 then v2 promoted."""
    from core.adapters import registry as adapters
    from core.store.database import Store

    store = Store(db)
    try:
        for _ in range(2):
            version, tmp = adapters.allocate_version(store, "dr_lee")
            adapters.write_memory(tmp, [])
            adapters.commit_version(store, "dr_lee", version, tmp, None, "memory",
                                    {"rougeL": 40.0 + version}, status="candidate")
            adapters.promote(store, "dr_lee", version, actor="nightly")
    finally:
        store.close()


def rate_the_study(db: Path) -> None:
    """Each rater rates a few of their study tasks, as in the app."""
    from core.accounts import auth
    from core.store.database import Store
    from core.studies import rating

    store = Store(db)
    try:
        for name in ("dr_a", "dr_b", "dr_c"):
            user = auth.sign_in(store, name, f"{name}-Passw0rd-2026")
            for i in range(6):
                task = rating.next_task(store, user, 1)
                rating.submit(store, user, task.task_id, [0, 1, -1][i % 3])
    finally:
        store.close()


@pytest.mark.slow
def test_every_readme_example_runs(tmp_path, monkeypatch, tiny):
    work = tmp_path / "work"
    work.mkdir()
    write_inputs(work)
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shims / "python").chmod(0o755)
    data = tmp_path / "data"
    monkeypatch.setenv("IMPRESSIONIST_DATA", str(data))
    monkeypatch.delenv("IMPRESSIONIST_DB")  # the default database of that data folder
    monkeypatch.delenv("IMPRESSIONIST_ADAPTERS", raising=False)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    db = data / "impressionist.duckdb"

    examples = readme_examples()
    assert len(examples) >= 20
    ran, skipped, promoted = [], [], False
    for command, context in examples:
        variant = VARIANTS.get(command)
        if variant is not None:
            mark, replacement, why = variant
            assert mark in context, f"README should mark {command!r} with {mark!r}"
            if replacement is None:
                skipped.append((command, why))
                continue
            command = replacement.format(tiny=tiny)
        command = command.replace("cd /opt/impressionist", f"cd {work}").replace(
            ".venv/bin/python", "python")
        if command.startswith("python -m core adapters") and not promoted:
            promote_two_versions(db)
            promoted = True
        if command.startswith("python -m core study close"):
            rate_the_study(db)
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert "leaked" not in result.stderr and "Traceback" not in result.stderr, \
            f"{command}\n{result.stderr}"
        ran.append(command)
    assert {c for c, _ in skipped} == {c for c, (_, r, _) in VARIANTS.items() if r is None}

    # what the examples left behind is where the README says
    assert (work / "predictions.csv").is_file() and (work / "pilot.html").is_file()
    assert (work / "backups" / "2026-11-23.duckdb").is_file()
    assert "leaked" not in (work / "logs" / "nightly.log").read_text()  # the cron line's log
    assert (data / "adapters" / "dr_lee" / "v2").is_dir()  # the database's home is data/
    listed = subprocess.run([sys.executable, "-m", "core", "adapters", "list"], cwd=work, env=env,
                            capture_output=True, text=True, timeout=120)
    lines = {ln.split()[1]: ln for ln in listed.stdout.splitlines() if ln.startswith("dr_lee")}
    assert "ACTIVE" in lines["v1"] and "rolled back" in lines["v2"], listed.stdout
    assert listed.stdout.splitlines()[0].split()[:3] == ["reader", "version", "state"]


def test_variants_name_real_readme_examples():
    """A changed README example must not leave a stale variant behind (it would run as is)."""
    commands = {c for c, _ in readme_examples()}
    assert set(VARIANTS) <= commands, set(VARIANTS) - commands
