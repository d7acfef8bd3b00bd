"""The command-line options both mutation tools take (contract_mutants.py, python_mutants.py): one definition."""

from __future__ import annotations

import argparse


def mutant_arg_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--max", type=int, default=0, help="run at most this many (a seeded sample; 0 = all)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--only", default="", help="comma-separated mutant numbers (from --list)")
    parser.add_argument("--files", default="", help="comma-separated substrings: mutate only matching files")
    parser.add_argument("--out", default=default_out)
    return parser
