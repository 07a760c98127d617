# One command each, from a fresh clone: `make demo`, `make test`.
# Both create ./.venv with the pinned stack when missing (tools/setup_env.sh; a stamp keyed on the
# requirement files makes a re-run instant).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo clean-env

setup:
	@VENV=$(VENV) bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	@bash tools/demo.sh $(PYTHON)

clean-env:
	rm -rf $(VENV)
