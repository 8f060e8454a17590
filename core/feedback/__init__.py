"""Feedback: what radiologists say about the texts they are shown, appended, never overwritten.

Owns the annotate workflow (next case, rate, edit, skip, undo, retract), the one save of a
rating (used by the queue and by study tasks), a reader's history, word diffs, the visibility
rules of general feedback views, and the import of feedback that already exists.

Modules:
    annotate    next case, save a rating or skip, undo/retract, history, diffs, export audit
    screen      the blinded rating's direction; which case a link may open
    history     My feedback / All feedback tables: filters, readable columns, corrections
    visibility  which rows a general view may show (a running study's ratings stay hidden)
    importing   draft -> signed impression CSVs imported as feedback, validated, chunked

May import: learning, generation, adapters, evaluation, clinical, accounts, ingest, store,
config, errors, util.
"""
