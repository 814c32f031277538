# onnxfleet: the two commands are `make demo` and `make test` (both run `make setup`).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
PYTEST ?= pytest
# make test runs the Python suites and the Ansible tier side by side (2), or one after the
# other (TEST_JOBS=1). Side by side, the Python suites run at a lower CPU priority
# (PYTHON_TIER_NICE): the Ansible tier is one chain of fleet runs (the molecule fleet, then
# the operations on it) and the longer of the two, the Python suites are independent files
# that fill the cores the chain leaves idle.
TEST_JOBS ?= 2
PYTHON_TIER_NICE ?= $(if $(filter 1,$(TEST_JOBS)),0,10)
# Processes the Python suites are spread over (pytest-xdist); each test file stays in one
# process, its tests in order (they share module fixtures: a moto fleet, a server).
PYTEST_WORKERS ?= auto

.PHONY: help setup lint test test-python test-ansible demo image bench bench-worker bench-mlserver bench-batching bench-models bench-orchestrator bench-front-door mutation lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## venv, Docker engine, base image, wheelhouse (idempotent)
	@scripts/setup.sh

lint: setup ## ruff, mypy
	ruff check .
	ruff format --check .
	mypy --config-file app/pyproject.toml app/onnxfleet

test-python: setup ## the pytest suite (real services, real containers), a process per core
	nice -n $(PYTHON_TIER_NICE) $(PYTEST) tests --ignore=tests/ansible -n $(PYTEST_WORKERS) --dist loadfile --durations=20

test-ansible: setup ## ansible-lint, syntax, local fleet, molecule scenarios (real DinD nodes)
	$(PYTEST) tests/ansible --durations=20

# Each tier's output is shown whole when it ends.
test: setup lint ## the whole suite (what CI runs)
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-python test-ansible

demo: ## setup, then deploy the local fleet with site.yml and show a prediction
	@scripts/demo.sh

image: setup ## build the onnxfleet image (cached by content hash)
	@scripts/image.py --archive-dir .cache/images

bench-worker: setup ## one worker vs onnxruntime in-process (prints figures)
	python -m bench.worker

bench-orchestrator: setup ## the orchestrator against HAProxy on the same sim containers (prints figures)
	python -m bench.orchestrator_vs_haproxy

bench-front-door: setup ## the whole front door (edge + orchestrator, HTTPS) against HAProxy alone with TLS (prints figures)
	python -m bench.front_door

bench-mlserver: setup ## one worker against MLServer (own venv under .cache/bench), OIP v2 JSON (prints figures)
	python -m bench.worker_vs_mlserver

bench-batching: setup ## 8 workers behind the orchestrator, batching off and on, wrk at 8 and 32 clients (prints figures)
	python -m bench.fleet_batching

bench-models: setup ## 6 workers behind the orchestrator: digits alone against digits, iris and credit on 2 each (prints figures)
	python -m bench.models

bench: bench-worker bench-mlserver bench-batching bench-models bench-orchestrator bench-front-door ## every benchmark (prints figures)

mutation: setup ## mutation testing of the orchestrator core (mutmut, about 15 min; not in make test)
	rm -rf .cache/mutation && mkdir -p .cache/mutation
	for f in app/onnxfleet tests pytest.ini app/pyproject.toml; do ln -s $(CURDIR)/$$f .cache/mutation/; done
	cd .cache/mutation && mutmut run --max-children 2 >/dev/null; mutmut results --all true | \
	  awk '{n[$$NF]++} END {for (s in n) print n[s], s; printf "score: %.1f %% of %d mutants killed\n", 100 * n["killed"] / NR, NR}'

lock: ## re-pin requirements/controller.txt and app/requirements.lock
	scripts/lock.sh

clean: ## remove caches (venv and images stay)
	rm -rf .cache/images .pytest_cache .ruff_cache .mypy_cache
