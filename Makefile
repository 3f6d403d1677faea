# Two commands for a fresh machine (see README): `make quickstart` and `make test`.
# Both set up one virtual environment in .venv (pip upgraded, torch installed first) and the test binaries in .tools/.
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# operator/ in the repository root would shadow the standard library's `operator` for `python -m` run from here.
export PYTHONSAFEPATH := 1

.PHONY: setup quickstart test crd tools import-graph

setup: $(STAMP) tools

$(STAMP): pyproject.toml scripts/install.sh
	test -x $(PYTHON) || python3 -m venv $(VENV)
	scripts/install.sh dev $(PYTHON)
	touch $(STAMP)

tools:
	scripts/fetch-tools.sh

examples/models/all-MiniLM-L6-v2: $(STAMP)
	$(PYTHON) scripts/link_minilm.py $@

quickstart: $(STAMP) examples/models/all-MiniLM-L6-v2
	$(VENV)/bin/peftjob validate examples/quickstart-cpu.yaml
	$(VENV)/bin/peftjob run examples/quickstart-cpu.yaml

test: setup
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(VENV)/bin/pytest -q -rs --durations=20

crd: $(STAMP)
	$(VENV)/bin/peftjob crd > crds/peftjob.yaml
	cp crds/peftjob.yaml charts/peftjob-operator/crds/peftjob.yaml

import-graph:
	python3 scripts/import_graph.py --write
