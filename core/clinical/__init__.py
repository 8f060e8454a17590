"""Clinical reading of report text: what a findings section or an impression states, negates or
hedges, which findings are critical, and whether an impression is true to its findings.

Owns the observation vocabulary, the rule-based labeler (CheXpert/NegEx recipe), the one
definition of a normal study and of a text's positive findings, the critical findings and
clinical weights, and the verifier that checks and repairs every text a person is shown. Pure
Python (``re`` and ``dataclasses``): importing it is instant and it touches no database.

Modules:
    vocabulary  observations and their regexes, related observations, normal statements,
                the critical terms whose typos are read right (declarative tables)
    text        text normalisation, typo correction, sentence and clause splitting
    critical    critical findings (what an impression must never omit) and clinical weights
    labeler     mentions, negation/uncertainty, ``label``, ``is_normal``, ``positive_findings``
    details     the side, severity, history, measurements and call records a text must not get
                wrong about its report (``misstated``)
    verifier    ``check_impression``, ``consistency``, ``repair_impression``, ``verify``

May import: config, errors, util (nothing else: the labeler knows no store, model or page).
"""
