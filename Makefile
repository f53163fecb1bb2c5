# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A GPU user picks another build, e.g. make demo TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0

.PHONY: demo test lint floors glyphs clean

$(BIN)/cmkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .[dev,text]
	touch $@

demo: $(BIN)/cmkd
	$(BIN)/cmkd demo

test: $(BIN)/cmkd
	$(BIN)/python -m pytest -q

lint: $(BIN)/cmkd
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy

# The dependency floors of pyproject.toml, checked: a second venv with exactly tools/floors.txt runs the
# library's tests (data formats, checkpoints, export, predict, the SRL).
FLOOR_TESTS := tests/test_library.py tests/test_table_format.py tests/test_images.py tests/test_predict.py \
               tests/test_kill_resume.py tests/test_srl.py
floors:
	$(PYTHON) -m venv .venv-floors
	.venv-floors/bin/pip install -q --upgrade pip
	.venv-floors/bin/pip install -q $(TORCH)
	.venv-floors/bin/pip install -q -c tools/floors.txt -e .[dev,text]
	.venv-floors/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

# Maintainers only: re-render the embedded glyph dataset from Debian font packages.
glyphs: $(BIN)/cmkd
	apt-get install -y -q $$($(BIN)/python tools/glyph_builder.py --print-packages)
	$(BIN)/python tools/glyph_builder.py

clean:
	rm -rf $(VENV) .venv-floors runs .pytest_cache
