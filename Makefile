# One-command entry points. Every target sets up .venv first (idempotent).
#   make study    - set up and run the default study (Snakemake, 2 cores); ARGS="..." adds
#                   Snakemake arguments, e.g. ARGS="--configfile configs/flow_grpo_ocr_test.yaml"
#   make dry-run  - what `make study` would run, and why (ARGS as above)
#   make report   - pack the study's annotated outputs into results/report.zip
#   make test     - set up and run the test suite
#   make ui       - serve the MLflow UI on http://127.0.0.1:5000 and print the runs' address
#   make unlock   - after a Snakemake run was killed (kill -9, a closed terminal): remove the
#                   lock that stops the next run ("Directory cannot be locked"), unless a
#                   Snakemake still runs in this folder (ARGS as above)
#   make ui-stop  - stop a UI server left by a `make ui` wrapper killed with SIGKILL (it stops
#                   its server itself on Ctrl-C, SIGTERM, SIGHUP and when make dies)
#   make follow   - every 15 s, the last line (progress, rate, ETA) of each job log written in
#                   the last minute: the jobs running now
#   make gpu-check - fail unless torch in .venv is a CUDA build that sees a GPU
# On a GPU machine, set up with a CUDA build of torch, e.g. (a fresh .venv; see docs/guide.md):
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stage shells call `python -m pipeline.<stage>`: put the venv first on their PATH.
RUN := PATH="$(BIN):$$PATH"
UI_PORT ?= 5000
# Where pip takes torch from (empty: pip's configured index). A CUDA wheel index gives a GPU build.
TORCH_INDEX ?=
TORCH_INDEX_FLAG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# The MLflow UI browser test drives Debian's headless Chromium (installed by `make test`).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup study dry-run report test lint ui ui-stop unlock follow gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and on its own: the CPU build on disk; otherwise a dependency's
	# unpinned torch would pull a multi-GB CUDA build.
	"$(BIN)/pip" install --quiet $(TORCH_INDEX_FLAG) torch==2.13.0
	"$(BIN)/pip" install --quiet -e '.[dev]'
	touch $@

setup: $(STAMP)

study: setup
	$(RUN) "$(BIN)/snakemake" $(ARGS)

dry-run: setup
	$(RUN) "$(BIN)/snakemake" -n $(ARGS)

report: setup
	$(RUN) "$(BIN)/snakemake" --report results/report.zip $(ARGS)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver

test: setup $(CHROMIUM)
	$(RUN) "$(BIN)/pytest" -q

lint: setup
	$(RUN) "$(BIN)/snakemake" --lint
	"$(BIN)/snakefmt" --check .
	"$(BIN)/ruff" check pipeline tests bench

gpu-check: setup
	"$(BIN)/python" -c "import sys, torch; n = torch.cuda.device_count(); print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s) visible'); sys.exit(0 if n else 1)"

ui: setup
	"$(BIN)/python" -m pipeline.runtime.mlflow_ui --db results/mlflow.db --port $(UI_PORT)

unlock: setup
	$(RUN) "$(BIN)/python" -m pipeline.workflow.unlock $(ARGS)

ui-stop: setup
	"$(BIN)/python" -m pipeline.runtime.mlflow_ui --db results/mlflow.db --stop

follow:
	@while true; do \
		date +%T; \
		find results -path '*/logs/*' -name '*.log' -mmin -1 2>/dev/null | sort | while read -r log; do \
			printf '  %s: %s\n' "$$log" "$$(tail -n 1 "$$log")"; \
		done; \
		sleep 15; \
	done

clean:
	rm -rf results .snakemake
