# make lab   - create .venv (first time), install the course, open JupyterLab
# make test  - the same setup, then run the unit tests and every notebook (nbval)
# make student - build the student edition (no solutions) into student/
# make clean - delete .venv

PYTHON ?= python3
VENV = .venv
STAMP = $(VENV)/.installed

.PHONY: lab test student clean

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# One thread per test process: the notebooks' checked outputs are computed with one thread
# (float sums in another order change trained figures), and tiny models gain nothing from
# more. Instead, pytest-xdist runs one test process per core; --dist loadfile keeps each
# notebook's cells together in one process, in order.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n auto --dist loadfile

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when pyproject.toml changes (or the first time).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -e ".[test]"
	touch $(STAMP)

# The student edition: solutions replaced by stubs, written to student/ (not committed).
student: $(STAMP)
	$(VENV)/bin/python -m fl_lessons.student --out student

clean:
	rm -rf $(VENV)
