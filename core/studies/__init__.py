"""Human evaluation studies: coordinator-designed, blinded, multi-rater ratings of impression
texts from several arms (the original, the base model, an adapter, a style, typos, another
source), with their results, statistics and exports.

Owns the study's design and life, blinded rater queues, progress, results and the statistics
behind them; the SQL is in ``core.store.studies``, the ratings themselves are feedback rows
saved through ``core.feedback.annotate``.

Modules:
    protocol    what a study asks: arms, rating scales, questions, the guideline
    access      who may touch a study (roles) and the status gates (open, closed, blinded)
    design      pure sampling, balanced assignment and blinding from the seed (no database)
    texts       each arm's texts: stored generations, or made and stored (model, styles)
    lifecycle   create from a design; pause, resume, close; list; what the design form offers
    assignment  assign raters to a draft, extend a running study, the overlap k in force
    rating      the rater's blinded side: their studies, next task, submit, undo
    progress    done/remaining per rater and arm, agreement so far (nothing by arm)
    results     every analysis of a closed study, one function each
    stats       proportions, the one bootstrap, paired/unpaired comparisons, Holm, Spearman
    agreement   kappas, Krippendorff's alpha, the reliability matrix, per-rater bias
    exports     ratings with the key, preference pairs for TRL, the HTML summary (audited)
    figures     one spec per study figure, drawn with plotly on the page and as SVG offline
    report      the one-page HTML summary and the plain-text report

May import: feedback, learning, generation, adapters, evaluation, clinical, accounts, ingest,
store, config, errors, util.
"""
