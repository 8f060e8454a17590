"""Reading report files: every supported format into validated records, and into the store.

Owns the report file formats and their detection, the one CSV reader (UTF-8, quoting and field
count checks; errors name file, row and field) that every CSV in core goes through, the record
checks every format shares, importing a file into the store all or nothing, the fixed
uid-based train/dev/test split, and the synthetic demo reports.

Modules:
    common         ReportRecord, text normalisation, read_csv_table/CsvTable, csv_header,
                   ReaderContext (the per-record checks), check_unique
    formats        FORMATS, detect_format, read_reports (dispatch to a format's reader)
    iu_xray        IU X-ray / Open-i CSV
    mimic_cxr      MIMIC-CXR free-text reports (.txt or a folder of them)
    chexpert_plus  CheXpert Plus CSV (one row per image, one report per study)
    generic_csv    any CSV, columns by name or a mapping
    jsonl          JSON Lines, keys by name or a mapping
    reports        import_file: validate the whole file, then import it all or nothing
    splits         split_of / load_iu_csv: the train/dev/test split by uid hash
    demo           synthetic_reports: consistent made-up reports for the demo and the tests

May import: store, config, errors, util.
"""
