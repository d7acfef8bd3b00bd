"""One-line mutants of the contracts, each compiled and run against the contract tests (`make mutate`).

Operators: flipped comparisons (< <= > >= == !=), off-by-one (+ 1 / - 1), doubled or dropped credits (`+=`,
`a + b` in an assignment), removed checks (`if (...) revert ...;`), and swapped arguments of an event or record.
Each mutant is applied to a temporary copy of `contracts/` and `ape-config.yaml`, never to the real files; the
tests see it through CLEARHOUSE_CONTRACTS_ROOT (tests/conftest.py). The stateful test runs first (HYPOTHESIS_PROFILE
=mutate: no shrinking); the example tests of tests/contracts run only on its survivors, so the result says which
mutants the stateful test alone kills. Writes var/mutate.json (or --out) and prints the kill rate per file.

    python tools/mutate/contract_mutants.py --list              # the mutants, numbered
    python tools/mutate/contract_mutants.py --max 40 --seed 1   # a bounded, seeded sample
    python tools/mutate/contract_mutants.py --only 3,17         # these mutants
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

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("contracts/modules", "contracts/libraries")
STATEFUL = ["tests/contracts/test_invariants.py"]
EXAMPLES = ["tests/contracts", "--deselect", "tests/contracts/test_invariants.py",
            "--ignore", "tests/contracts/test_gas.py", "--ignore", "tests/contracts/test_deploy_script.py"]
TIMEOUT_S = 900
# The planted bugs of issue 11: kept as mutants that every run includes.
PLANTED = (
    ("contracts/modules/Settlement.sol", "p.settled = CheckedCast.toUint128(settled + total);",
     "p.settled = CheckedCast.toUint128(settled + total + total);", "planted: one-policy credit doubled"),
    ("contracts/modules/Settlement.sol", "p.settled = uint128(settled + total);",
     "p.settled = uint128(settled + total + total);", "planted: one-policy credit doubled"),
    ("contracts/modules/IssueLogs.sol", "r.newCap = r.carried + r.newMoney;",
     "r.newCap = r.carried + r.newMoney + 100;", "planted: new-serial cap + 100"),
)


@dataclass(frozen=True)
class Mutant:
    file: str
    line: int  # 1-based
    operator: str
    original: str
    mutated: str

    @property
    def label(self) -> str:
        return f"{self.file}:{self.line} {self.operator}"


# --- generation -------------------------------------------------------------------------------------------------
_COMPARISONS = (("<=", "<"), (">=", ">"), ("==", "!="), ("!=", "=="), ("<", "<="), (">", ">="))
_CHECK = re.compile(r"^\s*if \(.*\) revert \w+\(.*\);\s*$")
_ARGS = re.compile(r"(emit \w+|\w+Record)\((?P<args>[^()]*(?:\([^()]*\)[^()]*)*)\);")


def _code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("//", "/*", "*", "pragma", "import"))


def _comparison_mutants(line: str) -> list[tuple[str, str]]:
    if "for (" in line or "=>" in line:
        return []
    out = []
    for old, new in _COMPARISONS:
        for match in re.finditer(rf"(?<![<>=!]){re.escape(old)}(?![<>=])", line):
            if old in ("<", ">") and (line[match.start() - 1: match.start()] in "<>" or "<<" in line[match.start():match.end() + 1]):
                continue
            out.append((f"flip {old} to {new}", line[:match.start()] + new + line[match.end():]))
            break
    return out


def _arithmetic_mutants(line: str) -> list[tuple[str, str]]:
    out = []
    if re.search(r"\+ 1\b", line):
        out.append(("off by one (+ 1 to + 2)", re.sub(r"\+ 1\b", "+ 2", line, count=1)))
    if re.search(r"- 1\b", line):
        out.append(("off by one (- 1 to - 0)", re.sub(r"- 1\b", "- 0", line, count=1)))
    credit = re.match(r"^(\s*)([\w.\[\]]+) \+= (.+);\s*$", line)
    if credit:
        indent, target, amount = credit.groups()
        out.append(("doubled credit (+= 2x)", f"{indent}{target} += ({amount}) * 2;\n"))
        out.append(("dropped credit (+= removed)", f"{indent}// mutant: dropped {target} += {amount};\n"))
    sub = re.match(r"^(\s*)([\w.\[\]]+) -= (.+);\s*$", line)
    if sub:
        indent, target, amount = sub.groups()
        out.append(("dropped debit (-= removed)", f"{indent}// mutant: dropped {target} -= {amount};\n"))
    assign = re.match(r"^(\s*)(.*?[\w.\]]+ = )(.*\w) \+ (\w[\w.]*)(\)?;)\s*$", line)
    if assign and "+=" not in line and "for (" not in line:
        indent, head, left, right, tail = assign.groups()
        out.append(("doubled addend", f"{indent}{head}{left} + {right} + {right}{tail}\n"))
        out.append(("dropped addend", f"{indent}{head}{left}{tail}\n"))
    return out


def _check_mutants(line: str) -> list[tuple[str, str]]:
    if _CHECK.match(line):
        indent = line[: len(line) - len(line.lstrip())]
        return [("removed check", f"{indent}// mutant: removed {line.strip()}\n")]
    return []


def _swap_mutants(line: str) -> list[tuple[str, str]]:
    match = _ARGS.search(line)
    if not match:
        return []
    args = [a.strip() for a in match.group("args").split(",")]
    if len(args) < 2:
        return []
    for i in range(len(args) - 1):
        a, b = args[i], args[i + 1]
        if a != b and re.fullmatch(r"[\w.\[\]]+", a) and re.fullmatch(r"[\w.\[\]]+", b):
            swapped = args[:i] + [b, a] + args[i + 2:]
            new_args = ", ".join(swapped)
            return [(f"swapped fields {a} and {b}",
                     line[: match.start("args")] + new_args + line[match.end("args"):])]
    return []


def generate(root: Path = ROOT) -> list[Mutant]:
    mutants: list[Mutant] = []
    for folder in TARGETS:
        for path in sorted((root / folder).glob("*.sol")):
            rel = str(path.relative_to(root))
            for number, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
                if not _code(line):
                    continue
                for operator, mutated in (_comparison_mutants(line) + _arithmetic_mutants(line)
                                          + _check_mutants(line) + _swap_mutants(line)):
                    if not mutated.endswith("\n"):
                        mutated += "\n"
                    if mutated != line:
                        mutants.append(Mutant(rel, number, operator, line, mutated))
    for rel, old, new, operator in PLANTED:
        lines = (root / rel).read_text().splitlines(keepends=True)
        for number, line in enumerate(lines, start=1):
            if line.strip() == old:
                mutants.insert(0, Mutant(rel, number, operator, line, line.replace(old, new)))
    return mutants


# --- running ----------------------------------------------------------------------------------------------------
def _tree(workdir: Path) -> Path:
    tree = workdir / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    shutil.copytree(ROOT / "contracts", tree / "contracts")
    shutil.copy(ROOT / "ape-config.yaml", tree / "ape-config.yaml")
    return tree


def _apply(tree: Path, mutant: Mutant) -> None:
    path = tree / mutant.file
    lines = path.read_text().splitlines(keepends=True)
    assert lines[mutant.line - 1] == mutant.original, f"{mutant.label}: source changed since generation"
    lines[mutant.line - 1] = mutant.mutated
    path.write_text("".join(lines))


def _compiles(tree: Path) -> tuple[bool, str]:
    sys.path.insert(0, str(ROOT))
    from offchain.chain import compile_contracts
    from offchain.core.errors import ConfigError

    try:
        compile_contracts(tree, force=True)
        return True, ""
    except ConfigError as exc:
        return False, str(exc).splitlines()[0][:200]


def _pytest(tree: Path, args: list[str]) -> tuple[bool, float, str]:
    env = {**os.environ, "CLEARHOUSE_CONTRACTS_ROOT": str(tree), "HYPOTHESIS_PROFILE": "mutate"}
    started = time.monotonic()
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - started, "timeout (counted as killed)"
    failed = run.returncode != 0
    summary = next((line for line in reversed(run.stdout.splitlines()) if line.startswith("FAILED")), "")
    return failed, time.monotonic() - started, summary[:200]


def run_one(workdir: Path, mutant: Mutant) -> dict:
    tree = _tree(workdir)
    _apply(tree, mutant)
    ok, error = _compiles(tree)
    result = {**asdict(mutant), "original": mutant.original.strip(), "mutated": mutant.mutated.strip()}
    if not ok:
        return {**result, "status": "stillborn", "detail": error}
    killed, seconds, detail = _pytest(tree, STATEFUL)
    if killed:
        return {**result, "status": "killed", "by": "stateful", "seconds": round(seconds, 1), "detail": detail}
    killed, more, detail = _pytest(tree, EXAMPLES)
    status = "killed" if killed else "survived"
    return {**result, "status": status, "by": "examples" if killed else None, "seconds": round(seconds + more, 1),
            "detail": detail}


def summarize(results: list[dict]) -> dict[str, dict]:
    per_file: dict[str, dict] = {}
    for r in results:
        row = per_file.setdefault(r["file"], {"mutants": 0, "killed": 0, "by_stateful": 0, "survived": 0,
                                              "stillborn": 0})
        if r["status"] == "stillborn":
            row["stillborn"] += 1
            continue
        row["mutants"] += 1
        row["killed"] += r["status"] == "killed"
        row["by_stateful"] += r.get("by") == "stateful"
        row["survived"] += r["status"] == "survived"
    for row in per_file.values():
        row["kill_rate"] = round(row["killed"] / row["mutants"], 3) if row["mutants"] else None
    return per_file


def main(argv: list[str] | None = None) -> int:
    args = mutant_arg_parser(__doc__.splitlines()[0], str(ROOT / "var" / "mutate.json")).parse_args(argv)
    mutants = generate()
    numbered = list(enumerate(mutants))
    if args.files:
        numbered = [(n, m) for n, m in numbered if any(f in m.file for f in args.files.split(","))]
    if args.list:
        for n, m in numbered:
            print(f"{n:4d} {m.label}: {m.mutated.strip()}")
        return 0
    if args.only:
        chosen = [numbered[int(n)] for n in args.only.split(",")]
    else:
        planted = [(n, m) for n, m in numbered if m.operator.startswith("planted")]
        rest = [(n, m) for n, m in numbered if not m.operator.startswith("planted")]
        if args.max:
            rest = sorted(random.Random(args.seed).sample(rest, max(0, min(len(rest), args.max - len(planted)))))
        chosen = planted + rest
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="clearhouse-mutate-") as workdir:
        for i, (n, mutant) in enumerate(chosen, start=1):
            result = {"number": n, **run_one(Path(workdir), mutant)}
            results.append(result)
            print(f"[{i}/{len(chosen)}] #{n} {mutant.label}: {result['status']}"
                  + (f" by {result['by']}" if result.get("by") else ""), flush=True)
            out.write_text(json.dumps({"generated": len(mutants), "run": len(results), "results": results,
                                       "per_file": summarize(results)}, indent=2) + "\n")
    per_file = summarize(results)
    print(f"\n{'file':45} {'mutants':>7} {'killed':>6} {'stateful':>8} {'survived':>8} {'rate':>6}")
    for name, row in sorted(per_file.items()):
        rate = "-" if row["kill_rate"] is None else f"{100 * row['kill_rate']:.0f}%"
        print(f"{name:45} {row['mutants']:7d} {row['killed']:6d} {row['by_stateful']:8d} {row['survived']:8d} "
              f"{rate:>6}")
    for r in results:
        if r["status"] == "survived":
            print(f"SURVIVED #{r['number']} {r['file']}:{r['line']} {r['operator']}: {r['mutated']}")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
