# make lab   - create .venv (first time), install the course, open JupyterLab
# make test  - the same setup, then run the unit tests and every notebook (nbval)
# make clean - delete .venv

PYTHON ?= python3
VENV = .venv
STAMP = $(VENV)/.installed

.PHONY: lab test clean

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

test: $(STAMP)
	$(VENV)/bin/python -m pytest

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or the first time).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV)
