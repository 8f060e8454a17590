"""The command line: ``python -m core <verb>``, one module per group of verbs.

Owns the verbs, their flags and their output, and the one place that turns errors into exit
statuses (0 ok, 2 bad input or a bad configuration value, 1 anything else). Flags for config
fields are built from the config dataclasses (their ``help`` metadata), so each default is
written once. Core functions return data and raise; the CLI prints and picks the exit status.

Modules:
    main        parser assembly, ``--db``, dispatch, exit statuses; ``main(argv) -> int``
    flags       option types, and flags built from config dataclasses (HfArgumentParser-style)
    common      the database of ``--db``, the CLI's own admin user, plain-text tables
    data        ``import`` (reports), ``feedback import``, ``evaluate``
    generation  ``generate``; loading the model and the generation pipeline
    accounts    ``users`` add, list, disable, enable
    demo        ``setup``, ``demo``, ``prepare-model``
    store       ``backup``, ``restore``
    studies     ``study`` create, assign, list, status, pause/resume/close, extend, report, export
    learning    ``pairs``, ``nightly``, ``adapters``, ``train-sft``

May import: everything below (config, errors, util, store, ingest, accounts, clinical,
evaluation, adapters, generation, learning, feedback, studies).
"""
