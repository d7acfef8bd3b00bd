"""One-line mutants of the Python money and trust paths, each run against that module's fast tests (`make mutate`).

The mutation operators are cosmic-ray's (parso-based; flipped comparisons, + and - swapped, +1/-1 on number
constants, `and`/`or` swapped, `not` added to an `if`/`while`/`assert` condition, True/False swapped), plus one of
ours: a `raise` replaced by `pass` (a removed check). cosmic-ray's own runner mutates the file in place; this
runner never does: it copies `offchain/`, `tests/` and `pyproject.toml` into a temporary tree (the rest of the
checkout is symlinked), applies each mutant there, and runs the module's mapped tests from that tree with bytecode
caching off (a same-size mutant written in the same second must not reuse a stale .pyc). The unmutated tree must
pass those tests first. Writes var/mutate-python.json (or --out) and prints the kill rate per file.

    python tools/mutate/python_mutants.py --list              # the mutants, numbered
    python tools/mutate/python_mutants.py --max 40 --seed 11  # a bounded, seeded sample spread over the files
    python tools/mutate/python_mutants.py --only 3,17         # these mutants
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cli_args import mutant_arg_parser

import parso
from cosmic_ray.ast import ast_nodes, get_ast
from cosmic_ray.ast.ast_query import ASTQuery
from cosmic_ray.mutating import MutationVisitor
from cosmic_ray.operators.operator import Example, Operator
from cosmic_ray.plugins import get_operator

ROOT = Path(__file__).resolve().parents[2]
# A mutant that hangs its tests (a bisection that never ends) is counted as "timeout" (killed). The limit is a
# multiple of the module's own baseline run on this machine, so a slow machine does not turn survivors into kills.
TIMEOUT_FACTOR = 6
MIN_TIMEOUT_S = 60
_PYTEST = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]


@dataclass(frozen=True)
class Target:
    path: str
    tests: tuple[str, ...]
    functions: str = ""  # regex on the enclosing function's name: mutate only these (empty = all but `skip`)
    skip: str = r"^(main|_parse_args|build_worker)$"


# Module -> the fast tests that exercise it (grep of the tests' imports; tests/services only where the module's
# own tests live there and run in-process).
TARGETS = (
    Target("offchain/clearing_center/settlement.py",
           ("tests/services/test_settlement_batching.py", "tests/services/test_settlement_isolation.py",
            "tests/services/test_settlement_recovery_paths.py", "tests/offchain/test_settlement_crash_point.py")),
    Target("offchain/clearing_center/transfers.py",
           ("tests/operator/test_settled_policies.py", "tests/offchain/test_transfer_receipts.py")),
    Target("offchain/bank/ledger.py",
           ("tests/db/test_ledger.py", "tests/offchain/test_bank_transfers.py", "tests/offchain/test_bank_mismatch.py")),
    Target("offchain/device/secure_module.py",
           ("tests/offchain/test_secure_module.py", "tests/offchain/test_batch_bounds.py",
            "tests/offchain/test_agreement_key.py", "tests/offchain/test_device_lost_answers.py",
            "tests/offchain/test_secure_module_renewal_guard.py")),
    Target("offchain/trust/certs.py",
           ("tests/offchain/test_certs.py", "tests/offchain/test_ca.py", "tests/offchain/test_tls.py")),
    Target("offchain/core/messages.py",
           ("tests/offchain/test_messages.py", "tests/offchain/test_fast_path.py"),
           functions=r"^(_check_\w+|check_signature_rules|recover\w*|verify\w*|_parse_hex|_from_json_value|"
                     r"__post_init__|from_logs|logs)$"),
    Target("offchain/clearing_center/agent.py", ("tests/network/test_release_finality.py",),
           functions=r"^(credit_releases|_release_final)$"),
    Target("offchain/chain/views.py", ("tests/offchain/test_final_views.py",),
           functions=r"^(final_block|confirmations|policy|issue_log|is_active|_decide|read)$"),
    Target("offchain/core/split.py",
           ("tests/offchain/test_split_shares.py", "tests/contracts/test_money_paths.py",
            "tests/operator/test_reconcile.py")),
)

_COMPARISONS = ("Eq_NotEq", "NotEq_Eq", "Lt_LtE", "LtE_Lt", "Gt_GtE", "GtE_Gt", "Is_IsNot", "IsNot_Is")
OPERATORS = (
    *(f"core/ReplaceComparisonOperator_{c}" for c in _COMPARISONS),
    "core/ReplaceBinaryOperator_Add_Sub", "core/ReplaceBinaryOperator_Sub_Add",
    "core/NumberReplacer", "core/ReplaceAndWithOr", "core/ReplaceOrWithAnd", "core/AddNot",
    "core/ReplaceTrueWithFalse", "core/ReplaceFalseWithTrue",
    "local/RaiseToPass",
)


class RaiseToPass(Operator):
    """A `raise ...` statement (or a bare re-raise) replaced by `pass`: the check it ends is removed."""

    def mutation_positions(self, node):
        if node.type == "raise_stmt" or (node.type == "keyword" and node.value == "raise"
                                         and node.parent.type != "raise_stmt"):
            yield (node.start_pos, node.end_pos)

    def mutate(self, node, index):
        prefix = node.get_first_leaf().prefix
        return parso.python.tree.Keyword("pass", node.start_pos, prefix=prefix)

    @classmethod
    def examples(cls):
        return (Example("if x:\n    raise E(1)\n", "if x:\n    pass\n"),)


def _operator(name: str) -> Operator:
    return RaiseToPass() if name == "local/RaiseToPass" else get_operator(name)()


@dataclass(frozen=True)
class Mutant:
    file: str
    operator: str
    occurrence: int
    line: int
    function: str
    original: str
    mutated: str

    @property
    def label(self) -> str:
        return f"{self.file}:{self.line} {self.operator.split('/')[-1]}"


# --- generation -------------------------------------------------------------------------------------------------
_ENTRY_POINT = re.compile(r"__name__ == |SystemExit\(main\(")  # the `python -m` entry point is not a money path


def _changed_line(before: str, after: str, line: int) -> str:
    lines = after.splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def generate_for(target: Target, root: Path = ROOT) -> list[Mutant]:
    source = (root / target.path).read_text()
    original_lines = source.splitlines()
    module = get_ast(source)
    mutants = []
    for name in OPERATORS:
        operator = _operator(name)
        positions = [(node, start) for node in ast_nodes(module) for start, _ in operator.mutation_positions(node)]
        for occurrence, (node, start) in enumerate(positions):
            function = ASTQuery(node).get_definition_name() or ""
            if re.search(target.skip, function) or (target.functions and not re.search(target.functions, function)):
                continue
            mutated = MutationVisitor.mutate_code(source, operator, occurrence)
            line = start[0]
            if mutated is None or mutated == source or _ENTRY_POINT.search(original_lines[line - 1]):
                continue
            mutants.append(Mutant(target.path, name, occurrence, line, function,
                                  original_lines[line - 1].strip(), _changed_line(source, mutated, line)))
    return mutants


def generate(root: Path = ROOT) -> list[Mutant]:
    return [m for target in TARGETS for m in generate_for(target, root)]


def sample(numbered: list[tuple[int, Mutant]], limit: int, seed: int) -> list[tuple[int, Mutant]]:
    """A seeded sample of `limit` mutants, dealt round-robin over the files so that every file gets its share."""
    rng = random.Random(seed)
    per_file: dict[str, list[tuple[int, Mutant]]] = {}
    for item in numbered:
        per_file.setdefault(item[1].file, []).append(item)
    for items in per_file.values():
        rng.shuffle(items)
    chosen: list[tuple[int, Mutant]] = []
    while len(chosen) < limit and any(per_file.values()):
        for items in per_file.values():
            if items and len(chosen) < limit:
                chosen.append(items.pop())
    return sorted(chosen)


# --- running ----------------------------------------------------------------------------------------------------
_COPIED = ("offchain", "tests", "pyproject.toml")
_LEFT_OUT = (".git", ".venv", "var", ".pytest_cache", ".hypothesis", "clearhouse.egg-info")


def make_tree(workdir: Path) -> Path:
    """A copy of offchain/, tests/ and pyproject.toml (no __pycache__); every other top-level entry symlinked."""
    tree = workdir / "tree"
    tree.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name in _COPIED:
            if entry.is_dir():
                shutil.copytree(entry, tree / entry.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(entry, tree / entry.name)
        elif entry.name not in _LEFT_OUT:
            (tree / entry.name).symlink_to(entry)
    (tree / "var").mkdir()
    return tree


def _env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CLEARHOUSE_CONTRACTS_ROOT")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", "CLEARHOUSE_ROOT": str(tree),
            "CLEARHOUSE_CONTRACTS_ROOT": str(ROOT), "HYPOTHESIS_PROFILE": "mutate"}


def check_isolation(tree: Path) -> None:
    """The tests in the tree must import the tree's offchain, not the checkout's (an editable install exists)."""
    probe = subprocess.run([sys.executable, "-c", "import offchain; print(offchain.__file__)"], cwd=tree,
                           env=_env(tree), capture_output=True, text=True, check=True)
    imported = Path(probe.stdout.strip()).resolve()
    if tree.resolve() not in imported.parents:
        raise SystemExit(f"isolation check failed: the tree imports {imported}, not its own copy")


def run_tests(tree: Path, tests: tuple[str, ...], timeout_s: float = 900) -> tuple[str, float, str]:
    started = time.monotonic()
    try:
        run = subprocess.run([*_PYTEST, *tests], cwd=tree, env=_env(tree), capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started, f"no result within {timeout_s:.0f} s (counted as killed)"
    lines = run.stdout.splitlines()
    failed = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), "")
    status = "survived" if run.returncode == 0 else "killed"
    return status, time.monotonic() - started, (failed or (lines[-1] if lines else run.stderr[-200:]))[:240]


def run_one(tree: Path, mutant: Mutant, target: Target, timeout_s: float) -> dict:
    path = tree / mutant.file
    source = path.read_text()
    mutated = MutationVisitor.mutate_code(source, _operator(mutant.operator), mutant.occurrence)
    assert mutated is not None, f"{mutant.label}: source changed since generation"
    try:
        path.write_text(mutated)
        status, seconds, detail = run_tests(tree, target.tests, timeout_s)
    finally:
        path.write_text(source)
    return {**asdict(mutant), "status": status, "seconds": round(seconds, 1), "detail": detail}


def summarize(results: list[dict]) -> dict[str, dict]:
    per_file: dict[str, dict] = {}
    for r in results:
        row = per_file.setdefault(r["file"], {"mutants": 0, "killed": 0, "timeout": 0, "survived": 0})
        row["mutants"] += 1
        row[r["status"]] += 1
    for row in per_file.values():
        row["kill_rate"] = round((row["killed"] + row["timeout"]) / row["mutants"], 3)
    return per_file


def print_table(per_file: dict[str, dict], results: list[dict]) -> None:
    print(f"\n{'file':45} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'rate':>6}")
    for name, row in sorted(per_file.items()):
        print(f"{name:45} {row['mutants']:7d} {row['killed']:6d} {row['timeout']:7d} {row['survived']:8d} "
              f"{100 * row['kill_rate']:5.0f}%")
    total = sum(r["mutants"] for r in per_file.values())
    dead = sum(r["killed"] + r["timeout"] for r in per_file.values())
    if total:
        print(f"{'all':45} {total:7d} {dead:6d} {'':7} {total - dead:8d} {100 * dead / total:5.0f}%")
    for r in results:
        if r["status"] == "survived":
            print(f"SURVIVED #{r['number']} {r['file']}:{r['line']} ({r['function']}) "
                  f"{r['operator'].split('/')[-1]}: {r['original']}  ->  {r['mutated']}")


def choose(numbered: list[tuple[int, Mutant]], only: str, limit: int, seed: int) -> list[tuple[int, Mutant]]:
    if only:
        wanted = {int(n) for n in only.split(",")}
        return [(n, m) for n, m in numbered if n in wanted]
    return sample(numbered, limit, seed) if limit else numbered


def baselines(tree: Path, paths: set[str]) -> dict[str, float]:
    """Each module's mapped tests must pass on the unmutated tree; their time sets that module's timeout."""
    targets = {t.path: t for t in TARGETS}
    timeouts: dict[str, float] = {}
    for path in sorted(paths):
        status, seconds, detail = run_tests(tree, targets[path].tests)
        timeouts[path] = max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * seconds)
        print(f"baseline {path}: {'passes' if status == 'survived' else 'FAILS'} ({seconds:.0f} s)", flush=True)
        if status != "survived":
            raise SystemExit(f"the unmutated tree fails the tests mapped to {path}: {detail}")
    return timeouts


def main(argv: list[str] | None = None) -> int:
    args = mutant_arg_parser(__doc__.splitlines()[0], str(ROOT / "var" / "mutate-python.json")).parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="clearhouse-pymutate-") as workdir:
        # Generated from the tree's copy, so a file edited in the checkout meanwhile cannot shift the occurrences.
        tree = make_tree(Path(workdir))
        mutants = generate(tree)
        numbered = list(enumerate(mutants))
        if args.files:
            numbered = [(n, m) for n, m in numbered if any(f in m.file for f in args.files.split(","))]
        if args.list:
            for n, m in numbered:
                print(f"{n:4d} {m.label} ({m.function}): {m.original}  ->  {m.mutated}")
            return 0
        chosen = choose(numbered, args.only, args.max, args.seed)
        check_isolation(tree)
        timeouts = baselines(tree, {m.file for _, m in chosen})
        targets = {t.path: t for t in TARGETS}
        for i, (n, mutant) in enumerate(chosen, start=1):
            result = {"number": n, **run_one(tree, mutant, targets[mutant.file], timeouts[mutant.file])}
            results.append(result)
            print(f"[{i}/{len(chosen)}] #{n} {mutant.label}: {result['status']}", flush=True)
            out.write_text(json.dumps({"generated": len(mutants), "run": len(results), "seed": args.seed,
                                       "results": results, "per_file": summarize(results)}, indent=2) + "\n")
    print_table(summarize(results), results)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
