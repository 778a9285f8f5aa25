"""The benchmarks of eval.py, one module each, and the files they share.

    files.py     question files, ground truth, strict JSON / JSONL readers, atomic writers, the answers' protocol
    generate.py  `generate`: answer a question file with a checkpoint (the only module that imports the model)
    chair.py     CHAIR (COCO captions): `chair-gt`, `chair-questions`, `chair`
    pope.py      POPE (yes / no object questions): `pope-build`, `pope`
    mmhal.py     MMHal-Bench (an LLM judge over the chat API): `mmhal`
    amber.py     AMBER (generative CHAIR / Cover / Hal / Cog, discriminative P / R / F1): `amber`; amber_words.py its
                 built-in noun matcher
    report.py    `report`: every benchmark of every run in one table, beside the published numbers

A benchmark is wired by adding its module's name to BENCHMARKS below. What the module provides:

    COMMANDS = {"name": (help, add_arguments, run), ...}   # one entry per subcommand, in --help order
        add_arguments(parser)  adds the subcommand's flags to its argparse parser (eval.py adds --recipe itself, and
                               a recipe section's keys become the defaults of the flags they name)
        run(args)              does the work. A scoring command writes one metrics JSON (or one per split):
                               {"kind": <benchmark>, "metrics": {name: number, ...}, "protocol": protocol(answers),
                                <its inputs>...}; rates as fractions, never percent; counts of anything skipped
                               or unparseable inside "metrics".
    questions(path, args) -> list[dict] | None             # optional: the benchmark's own question file
        `generate`'s work list when `path` is this benchmark's question file, None when it is not (decide cheaply,
        and without raising, from the file's shape). Each record: {"question_id", "prompt" (as the model is asked
        it, suffix included), "image_file" (a path), "suffix" ("" if none), "where" (file and line or item, for
        messages), "answer_base" (the fields the answer line starts from)}. It may set its protocol's defaults on
        args where they are None (as mmhal.py does for max_new_tokens). Files no module takes are read as JSONL
        question files by evals/files.py (ours, POPE's, LLaVA's).
    REPORT (optional, evals/report.py): the columns the report shows for the module's "kind" and the published
        numbers beside them; see evals/report.py.

A module imports torch or the model code only inside a function that needs it (as generate.py does), so that
`eval.py --help` and the scoring commands start in well under a second.
"""
BENCHMARKS = ("chair", "pope", "mmhal", "objhal", "sqa", "mme", "amber")  # evals/<name>.py, in --help order after `generate`
