"""The benchmarks of eval.py, one module each, and the files they share.

    files.py     question files, ground truth, strict JSON / JSONL readers, atomic writers, the answers' protocol
    generate.py  `generate`: answer a question file with a checkpoint (the only module that imports the model)
    chair.py     CHAIR (COCO captions): `chair-gt`, `chair-questions`, `chair`
    pope.py      POPE (yes / no object questions): `pope-build`, `pope`
    mmhal.py     MMHal-Bench (an LLM judge over the chat API): `mmhal`
    report.py    `report`: every benchmark of every run in one table

What a benchmark module provides, so that eval.py wires it with one word in its MODULES:

    COMMANDS = {"name": (help, add_arguments, run), ...}   # one entry per subcommand, in --help order
        add_arguments(parser)  adds the subcommand's flags to its argparse parser (eval.py adds --recipe itself, and
                               a recipe section's keys become the defaults of the flags they name)
        run(args)              does the work. A scoring command writes one metrics JSON (or one per split):
                               {"kind": <benchmark>, "metrics": {name: number, ...}, "protocol": protocol(answers),
                                <its inputs>...}; rates as fractions, never percent; counts of anything skipped
                               (unparseable answers, missing items) inside "metrics".

A module imports torch or the model code only inside a function that needs it (as generate.py does), so that
`eval.py --help` and the scoring commands start in well under a second.
"""
