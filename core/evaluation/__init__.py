"""Automatic scores of generated impressions against references and findings.

Owns the metrics (ROUGE-1/2/L through ``rouge_score``, the fast ROUGE-L the vote and the rewards
use, BLEU, BERTScore with the offline MiniLM, clinical label F1, findings-impression consistency,
typo injection), the independent MeSH-based clinical score, and ``python -m core evaluate``'s
work: joining a predictions CSV with a references CSV and scoring the pairs. Heavy libraries
(rouge_score, sacrebleu, torch, transformers) are imported inside the functions that use them.

Modules:
    metrics  rouge, rouge_l, bleu, bertscore, label_f1, evaluate, format_table, inject_typos
    mesh     the human MeSH labels of IU X-ray against what an impression names (own matcher)
    compare  predictions joined with references by uid (the one CSV reader), scored, formatted

May import: clinical, accounts, ingest, store, config, errors, util.
"""
