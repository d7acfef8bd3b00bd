# The two commands of the README: `make demo` (set up, then run the whole settlement story) and
# `make test` (set up, then run the test suite). Everything else is a convenience.
SHELL := /bin/bash
.PHONY: setup demo test test-deep mutate bench sim-deep network-up network-down clean distclean

setup:
	@bin/setup

demo: setup
	@source bin/env.sh && clearhouse demo

test: setup
	@source bin/env.sh && bin/test

test-deep: setup
	@mkdir -p var && rm -f var/hypothesis-deep.progress && source bin/env.sh && HYPOTHESIS_PROFILE=deep \
	  CLEARHOUSE_HYPOTHESIS_PROGRESS=var/hypothesis-deep.progress \
	  CLEARHOUSE_HYPOTHESIS_OUTCOMES=var/hypothesis-deep.outcomes.json CLEARHOUSE_RECONCILE_EVERY=$${RECONCILE_EVERY:-5} \
	  python -m pytest -m stateful -p no:cacheprovider --hypothesis-show-statistics

# One-line contract mutants (tools/mutate/contract_mutants.py), each compiled in a temp copy of contracts/ and run
# against the stateful test, then the example tests; MUTATE_MAX bounds a seeded sample (0 = all ~200, hours).
# Then one-line Python mutants of the money and trust paths (tools/mutate/python_mutants.py, cosmic-ray operators)
# in a temp copy of offchain/ and tests/, each run against the module's fast tests; same MUTATE_MAX and seed.
mutate: setup
	@mkdir -p var && source bin/env.sh && python tools/mutate/contract_mutants.py --max $${MUTATE_MAX:-40} \
	  --seed $${MUTATE_SEED:-11} --out var/mutate.json \
	  && python tools/mutate/python_mutants.py --max $${MUTATE_MAX:-40} --seed $${MUTATE_SEED:-11} \
	  --out var/mutate-python.json

# Fault simulation, hundreds of seeds (`clearhouse sim`); the summary lands in var/sim/last-run.json.
sim-deep: setup
	@source bin/env.sh && clearhouse sim --seeds $${SIM_SEEDS:-1-300} --faults all --jobs $${SIM_JOBS:-3} $${SIM_BUDGET_S:+--budget-s $$SIM_BUDGET_S}

bench: setup
	@source bin/env.sh && clearhouse bench gas && clearhouse bench verify

network-up: setup
	@source bin/env.sh && clearhouse network up

network-down:
	@source bin/env.sh && clearhouse network down

# What runs leave behind: var/ (demo work directories, service databases, logs, sim runs), test and Hypothesis
# caches, bytecode, the dev chain's deployments/local.json. `distclean` also removes what `make setup` installs.
clean:
	@rm -rf var .pytest_cache .hypothesis .cache deployments/local.json
	@find . -path ./.venv -prune -o -path ./node_modules -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
	@echo "[clean] removed var/, caches, __pycache__/ and deployments/local.json"

distclean: clean
	@rm -rf .venv node_modules .build .solcx .tools *.egg-info
	@echo "[clean] removed .venv, node_modules, .build, .solcx, .tools (run make setup again)"
