"""Recipe files: the settings of one real run, as TOML beside this file, each value with a comment on its source.

A recipe is read by the command it is for and sets that command's defaults; the command line still overrides:

    torchrun --nproc_per_node=8 train.py recipes/povid_stage1.toml --init_from=... --data=...
    python hallucinate.py clip-rank --recipe recipes/clip_rank.toml --checkpoint=... ...
    python eval.py generate --recipe recipes/eval.toml:chair ...          # FILE:SECTION picks one [section]

Keys are the command's option names (dashes or underscores); a key the command does not know is an error that names
the file and the key, so a typo never silently leaves a default in place. TOML comes with Python (tomllib, 3.11+).
"""
from __future__ import annotations

import argparse
import os
import tomllib


def load(spec: str) -> tuple[dict, str]:
    """'FILE' or 'FILE:SECTION' -> (flat {key: value} with dashes turned into underscores, 'FILE[:SECTION]').
    Without a section, the file's top-level keys (tables are sections, and are left out)."""
    path, _, section = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise SystemExit(f"recipe {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SystemExit(f"recipe {path}: {e}") from None
    if section:
        if not isinstance(doc.get(section), dict):
            known = ", ".join(k for k, v in doc.items() if isinstance(v, dict)) or "none"
            raise SystemExit(f"recipe {path}: no [{section}] section (sections: {known})")
        doc = doc[section]
    flat = {k.replace("-", "_"): v for k, v in doc.items() if not isinstance(v, dict)}
    return flat, path + (f":{section}" if section else "")


def apply_to_parser(parser: argparse.ArgumentParser, spec: str) -> None:
    """Make the recipe's values the parser's defaults (before parse_args). Unknown keys and values of the wrong type
    for the option are errors naming the recipe and the key."""
    apply_values(parser, *load(spec))


def apply_values(parser: argparse.ArgumentParser, values: dict, where: str) -> None:
    """apply_to_parser on values already loaded (e.g. the subset of a recipe section one subcommand takes)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}
    for key, val in values.items():
        act = actions.get(key)
        if act is None:
            raise SystemExit(f"recipe {where}: unknown key {key!r} for this command "
                             f"(known: {', '.join(sorted(actions))})")
        if isinstance(act, argparse._StoreTrueAction) or isinstance(act, argparse._StoreFalseAction):
            if not isinstance(val, bool):
                raise SystemExit(f"recipe {where}: {key} must be true or false, got {val!r}")
        elif act.type is not None and not isinstance(val, bool):
            try:
                val = act.type(val)
            except (TypeError, ValueError):
                raise SystemExit(f"recipe {where}: {key}={val!r} is not a valid {act.type.__name__}") from None
        if act.choices is not None and val not in act.choices:
            raise SystemExit(f"recipe {where}: {key}={val!r} is not one of {', '.join(map(str, act.choices))}")
        parser.set_defaults(**{key: val})
        act.required = False  # a required option the recipe supplies
