"""Adapters: the versioned per-reader registry on disk and the shared base adapter's one home.

A reader's adapter version is a folder of LoRA weights plus a memory of their accepted
impressions; the database names the active version, a pointer file mirrors it.

Modules:
    registry  versions on disk (allocate, commit, promote, rollback, pointers), reader memory
              files, drafting settings, the Adapters page's tables
    base      the shared base adapter: where it is, whether it fits a model, loading, shipping
    files     checking a PEFT adapter folder without loading it

May import: config, errors, util, store, accounts. Knows nothing of generation or learning
(drafting with an adapter is core.generation.personal; training one is core.learning).
"""
