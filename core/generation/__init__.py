"""Generation: from a report's findings to the impression a radiologist sees, coarse to fine.

Modules:
    checkpoint  the embedded model on disk (prepared once from its GGUF), the tiny test model
    models      loading a model once, LoRA adapters in one batch, batched generation
    backends    the generation backends (transformers; vLLM multi-LoRA on a GPU)
    retrieval   TF-IDF neighbours over the store's reports, cached on disk
    prompts     the one prompt the model writes from (serving, SFT, DPO/GRPO, the gate)
    styles      audience styles (brief, bullet points, comprehensive) and their fallbacks
    pipeline    the coarse-to-fine pipeline: retrieval and the vote, then the model
    check       the clinical check and the style of every text a person is shown
    personal    drafting for many readers at once, each with their own adapter and memory
    csvfile     ``python -m core generate``: a CSV of findings in, a CSV of impressions out

May import: config, errors, util, store, ingest, clinical, evaluation, adapters.
Knows nothing of learning, feedback or studies.
"""
