"""Hallucination evaluation, the command line: answer a question file with a checkpoint, score each benchmark, and
tabulate runs. One module per benchmark under evals/ (CHAIR, POPE, MMHal-Bench; evals/__init__.py says what a module
provides); file formats in evals/files.py and the benchmark modules; the published protocols in recipes/eval.toml.

    python eval.py generate  --checkpoint CKPT --questions Q --output RUN/answers.jsonl [--image-root DIR]
                             [--recipe recipes/eval.toml:chair|pope|mmhal] [--vision-tower CLIP_DIR] [--shard I/N]
    python eval.py chair-gt  --instances instances_val2014.json --captions captions_val2014.json --images-dir val2014
                             --synonyms synonyms.txt --num-images 500 --seed 0 --output DIR [--sample-ids IDS.txt]
    python eval.py chair     --answers A.jsonl --annotations DIR/chair_gt.json [--out RUN/chair.json]
    python eval.py pope      --answers A.jsonl --questions coco_pope_random.json [--parser official|povid]
                             [--label-dir POPE/coco (for LLaVA's llava_pope_test.jsonl)] [--out RUN/pope_{split}.json]
    python eval.py mmhal     --questions response_template.json --answers A.jsonl --judge-model gpt-4-0314
                             [--judge-template LLaVA-RLHF/MMHal-Bench-eval/eval_gpt4.py] --out RUN/mmhal.json
    python eval.py report    RUN_DIR... [--out DIR]     # DIR/report.md + DIR/report.json
    python eval.py chair-questions --annotations GT.json --output Q.jsonl   # our own GT files (the toy world)
    python eval.py pope-build --annotations GT.json --split random|popular|adversarial --output Q.jsonl

`generate` is resumable and records the protocol with every answer (evals/generate.py). --recipe FILE:SECTION sets
the defaults of whichever subcommand runs from that section (keys another eval.py subcommand takes are left to it; a
key none takes is an error); the command line still wins. Each scoring command writes a metrics JSON
{"kind": ..., "metrics": {...}, "protocol": ..., inputs...}, which `report` reads (evals/report.py).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

import evals
import recipes

# the modules whose COMMANDS make the subcommands, in --help order (evals/__init__.py: the contract)
MODULES = ("generate", *evals.BENCHMARKS, "report")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = p.add_subparsers(dest="cmd", required=True)
    subs = {}
    for name in MODULES:
        for cmd, (help_, add_arguments, run) in importlib.import_module(f"evals.{name}").COMMANDS.items():
            s = sub.add_parser(cmd, help=help_, description=help_)
            s.add_argument("--recipe", default=None, help="FILE[:SECTION] of defaults, e.g. recipes/eval.toml:pope")
            add_arguments(s)
            s.set_defaults(fn=run)
            subs[cmd] = s
    return p, subs


def apply_recipe(argv: list[str], subs: dict[str, argparse.ArgumentParser]) -> None:
    """First pass: find --recipe and the subcommand, set that subcommand's defaults from the recipe's keys it takes.
    A key that no eval.py subcommand takes is an error (a typo must not leave a default in place)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    spec = pre.parse_known_args(argv)[0].recipe
    cmd = next((x for x in argv if x in subs), None)
    if spec is None or cmd is None:
        return
    values, where = recipes.load(spec)
    dests = {name: {act.dest for act in s._actions} for name, s in subs.items()}
    unknown = sorted(set(values) - set().union(*dests.values()))
    if unknown:
        raise SystemExit(f"recipe {where}: unknown key(s) {', '.join(unknown)}: no eval.py subcommand takes them")
    recipes.apply_values(subs[cmd], {k: v for k, v in values.items() if k in dests[cmd]}, where)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p, subs = build_parser()
    apply_recipe(argv, subs)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a.fn(a)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a user's file or flag: one line naming it, no traceback
        sys.exit(f"eval.py: error: {e}")
