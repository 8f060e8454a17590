"""Agreement of the rule-based labeler (core.clinical.labeler) with the IU X-ray human MeSH annotations.

Run: .venv/bin/python bench/labeler_agreement.py [--csv PATH] [--errors LABEL] [--n 10]

For every report, ``label(findings + " " + impression)`` is compared with the report's MeSH
column mapped to our observations (``MESH_MAP`` below). A label counts as predicted when it is
POSITIVE or UNCERTAIN. Reports indexed "No Indexing" are skipped. Prints a markdown table
(per label: support, predicted, precision, recall, F1) plus micro/macro F1 over the labels with
support >= 20, and how often ``check_impression`` flags the human-written impressions (these are
mostly correct, so the flag rate is an upper bound on the checker's false-alarm rate).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.clinical.labeler import label, positive_findings  # noqa: E402
from core.clinical.verifier import check_impression  # noqa: E402
from core.clinical.vocabulary import Label  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared/data/iu_xray/reports.csv"
MIN_SUPPORT = 20

_DEVICE_HEADS = {
    "catheters, indwelling", "implanted medical device", "medical device", "tube, inserted",
    "surgical instruments", "stents", "sutures", "prostheses and implants", "pacemaker, artificial",
}
_SPINE = {"thoracic vertebrae", "spine", "lumbar vertebrae", "cervical vertebrae", "vertebral body"}


def mesh_to_obs(term: str) -> set[str]:
    """Map one MeSH term ("Opacity/lung/base/left") to our observation names.

    Args:
        term: one ';'-separated item of the MeSH column.

    Returns:
        The set of observations it implies (empty when unmapped).
    """
    parts = [p.strip().lower() for p in term.split("/")]
    head, q = parts[0], set(parts[1:])
    out: set[str] = set()
    if head == "normal":
        out.add("No Finding")
    elif head == "cardiomegaly" or (head in ("cardiac shadow", "heart") and "enlarged" in q):
        out.add("Cardiomegaly")
    elif head == "mediastinum" and q & {"enlarged", "widened", "large"}:
        out.add("Enlarged Cardiomediastinum")
    elif head == "pulmonary atelectasis":
        out.add("Atelectasis")
    elif head == "pleural effusion":
        out.add("Pleural Effusion")
    elif head in ("calcified granuloma", "granulomatous disease", "granuloma"):
        out.add("Granuloma")
    elif head in ("opacity", "airspace disease", "infiltrate", "density"):
        out.add("Lung Opacity")
        if head == "density" and "round" in q:  # IU indexes "nodular density" as Density/round
            out |= {"Nodule", "Lung Lesion"}
        if "interstitial" in q:  # "interstitial opacities" are indexed as Opacity/.../interstitial
            out.add("Interstitial Disease")
    elif head == "nodule":
        out |= {"Nodule", "Lung Lesion"}
    elif head == "mass":
        out |= {"Mass", "Lung Lesion"}
    elif head == "cavitation":
        out.add("Lung Lesion")
    elif head in ("pneumothorax", "hydropneumothorax", "hemopneumothorax"):
        out.add("Pneumothorax")
    elif head in ("emphysema", "pulmonary emphysema", "bullous emphysema", "pulmonary disease, chronic obstructive", "lung, hyperlucent"):
        out.add("Emphysema")
    elif head == "lung" and "hyperdistention" in q:
        out.add("Emphysema")
    elif head == "lung" and "hypoinflation" in q:
        out.add("Low Lung Volumes")
    elif (head in _SPINE and "degenerative" in q) or head in ("spondylosis", "hyperostosis, diffuse idiopathic skeletal"):
        out.add("Degenerative Spine")
    elif head in ("osteophyte", "arthritis") and (q & _SPINE or not q):
        out.add("Degenerative Spine")
    elif head == "scoliosis":
        out.add("Scoliosis")
    elif head in ("hernia, hiatal", "hernia, diaphragmatic"):
        out.add("Hernia")
    elif head == "fractures, bone":
        out.add("Fracture")
    elif head == "pulmonary edema":
        out.add("Edema")
    elif head == "pulmonary congestion":
        out.add("Vascular Congestion")
    elif head == "consolidation":
        out.add("Consolidation")
    elif head == "pneumonia":
        out.add("Pneumonia")
    elif head in _DEVICE_HEADS:
        out.add("Support Devices")
    elif head in ("calcinosis", "atherosclerosis"):
        out.add("Calcification")
    elif head in ("aorta", "aorta, thoracic") and "tortuous" in q:
        out.add("Tortuous Aorta")
    elif head == "cicatrix":
        out.add("Scarring")
    elif head in ("pulmonary fibrosis", "lung diseases, interstitial") or (head == "markings" and "interstitial" in q):
        out.add("Interstitial Disease")
    elif (head == "diaphragm" and "elevated" in q) or head == "diaphragmatic eventration":
        out.add("Elevated Diaphragm")
    elif (head == "thickening" and (not q or "pleura" in q)) or (head == "costophrenic angle" and "blunted" in q):
        out.add("Pleural Other")
    elif head == "pneumoperitoneum":
        out.add("Free Air")
    return out


def truth_labels(mesh: str) -> set[str]:
    """All observations implied by a MeSH cell (';'-separated terms)."""
    out: set[str] = set()
    for t in str(mesh).split(";"):
        if t.strip():
            out |= mesh_to_obs(t)
    return out


EVALUATED = sorted({o for t in [
    "normal", "Cardiomegaly", "Mediastinum/enlarged", "Pulmonary Atelectasis", "Pleural Effusion", "Calcified Granuloma",
    "Opacity", "Nodule", "Mass", "Pneumothorax", "Emphysema", "Lung/hypoinflation", "Spine/degenerative", "Scoliosis",
    "Hernia, Hiatal", "Fractures, Bone", "Pulmonary Edema", "Pulmonary Congestion", "Consolidation", "Pneumonia",
    "Medical Device", "Calcinosis", "Aorta/tortuous", "Cicatrix", "Pulmonary Fibrosis", "Diaphragm/elevated",
    "Thickening", "Pneumoperitoneum"] for o in mesh_to_obs(t)})


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 (0 when undefined)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print markdown tables. Returns a process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--errors", default=None, help="print disagreements for this label")
    ap.add_argument("--n", type=int, default=10, help="how many disagreements to print")
    ap.add_argument("--split", choices=("all", "train", "dev", "test"), default="all",
                    help="only the reports of this core.ingest.splits split (test: out of sample; rules "
                         "are tuned on train only, so --errors is refused on test)")
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"reports file {args.csv} absent", file=sys.stderr)
        return 2
    import pandas as pd

    if args.split == "test" and args.errors:
        print("--errors on the test split would tune the rules on it: use --split train", file=sys.stderr)
        return 2
    from core.ingest.splits import in_split

    df = pd.read_csv(args.csv).fillna("")
    df = df[~df["MeSH"].str.contains("No Indexing", regex=False)]
    if args.split != "all":
        df = df[[in_split(str(u), args.split) for u in df["uid"]]]
    counts = {o: Counter() for o in EVALUATED}
    strict = Counter()  # POSITIVE-only predictions, pooled over labels with support >= MIN_SUPPORT
    errors: list[tuple[str, str, str, str]] = []
    t0 = time.perf_counter()
    for row in df.itertuples():
        text = f"{row.findings} {row.impression}"
        labels = label(text)
        pred = set(positive_findings(labels, no_finding=True))
        pos_only = {k for k, v in labels.items() if v is Label.POSITIVE}
        truth = truth_labels(row.MeSH)
        for o in EVALUATED:
            strict[(o, "tp" if o in pos_only and o in truth else "fp" if o in pos_only else "fn" if o in truth else "tn")] += 1
        for o in EVALUATED:
            p, t = o in pred, o in truth
            counts[o]["tp" if p and t else "fp" if p else "fn" if t else "tn"] += 1
            if args.errors == o and p != t:
                errors.append(("FP" if p else "FN", str(row.uid), row.MeSH, text))
    elapsed = time.perf_counter() - t0

    print(f"IU X-ray reports, split {args.split}: {len(df)} (excluding 'No Indexing'); labeled in {elapsed:.1f} s "
          f"({len(df) / elapsed:.0f} reports/s)\n")
    print("| label | support | predicted | precision | recall | F1 |")
    print("|---|---:|---:|---:|---:|---:|")
    tp = fp = fn = 0
    macro = []
    tp_all = fp_all = fn_all = 0
    for o in sorted(EVALUATED, key=lambda o: -(counts[o]["tp"] + counts[o]["fn"])):
        c = counts[o]
        sup = c["tp"] + c["fn"]
        p, r, f = prf(c["tp"], c["fp"], c["fn"])
        mark = "" if sup >= MIN_SUPPORT else " *"
        print(f"| {o}{mark} | {sup} | {c['tp'] + c['fp']} | {p:.3f} | {r:.3f} | {f:.3f} |")
        tp_all, fp_all, fn_all = tp_all + c["tp"], fp_all + c["fp"], fn_all + c["fn"]
        if sup >= MIN_SUPPORT:
            tp, fp, fn = tp + c["tp"], fp + c["fp"], fn + c["fn"]
            macro.append(f)
    mp, mr, mf = prf(tp, fp, fn)
    ap_, ar, af = prf(tp_all, fp_all, fn_all)
    print(f"| **micro (support >= {MIN_SUPPORT}, {len(macro)} labels)** | {tp + fn} | {tp + fp} | {mp:.3f} | {mr:.3f} | **{mf:.3f}** |")
    print(f"| **macro (support >= {MIN_SUPPORT})** | | | | | **{sum(macro) / len(macro):.3f}** |")
    print(f"| micro (all {len(EVALUATED)} labels) | {tp_all + fn_all} | {tp_all + fp_all} | {ap_:.3f} | {ar:.3f} | {af:.3f} |")
    big = [o for o in EVALUATED if counts[o]["tp"] + counts[o]["fn"] >= MIN_SUPPORT]
    sp, sr, sf = prf(*(sum(strict[(o, k)] for o in big) for k in ("tp", "fp", "fn")))
    s_macro = [prf(strict[(o, "tp")], strict[(o, "fp")], strict[(o, "fn")])[2] for o in big]
    print(f"| micro, POSITIVE only (support >= {MIN_SUPPORT}) | | | {sp:.3f} | {sr:.3f} | {sf:.3f} |")
    print(f"| macro, POSITIVE only (support >= {MIN_SUPPORT}) | | | | | {sum(s_macro) / len(s_macro):.3f} |")
    print(f"\n`*` support < {MIN_SUPPORT}: shown, not in micro/macro. Predicted = POSITIVE or UNCERTAIN unless "
          "'POSITIVE only' (IU MeSH usually leaves hedged findings unindexed).")

    flags = Counter()
    crit = Counter()
    for row in df.itertuples():
        r = check_impression(row.findings, row.impression)
        flags["missing_critical"] += bool(r.missing_critical)
        flags["contradiction"] += bool(r.contradictions)
        flags["unsupported"] += bool(r.unsupported)
        flags["any"] += not r.ok
        for o in r.missing_critical:
            crit[o] += 1
    n = len(df)
    print("\nHuman impressions flagged by check_impression (upper bound of false alarms):\n")
    print("| flag | reports | share |")
    print("|---|---:|---:|")
    for k in ("missing_critical", "contradiction", "unsupported", "any"):
        print(f"| {k} | {flags[k]} | {flags[k] / n:.1%} |")
    if crit:
        print("\nmissing critical by observation: " + ", ".join(f"{k} {v}" for k, v in crit.most_common()))

    if args.errors:
        print(f"\n{len(errors)} disagreements for {args.errors}:")
        for kind, uid, mesh, text in errors[: args.n]:
            print(f"- {kind} uid={uid} MeSH={mesh}\n  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
