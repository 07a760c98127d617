# One command each, from a fresh clone: `make demo`, `make test`.
# Both create ./.venv with the pinned stack when missing (tools/setup_env.sh; a stamp keyed on the
# requirement files makes a re-run instant).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup test demo clean-env lock

setup:
	@VENV=$(VENV) bash tools/setup_env.sh

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	@bash tools/demo.sh $(PYTHON)

clean-env:
	rm -rf $(VENV)

# Rebuild requirements/lock.txt from the direct requirements in a fresh environment (maintainers).
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -r requirements/torch.txt -r requirements/runtime.txt -r requirements/tests.txt
	{ head -3 requirements/lock.txt; .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt && rm -rf .lock-venv
