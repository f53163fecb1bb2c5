# Two entry points: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A GPU user picks another build, e.g. make demo TORCH="torch==2.13.0 --index-url ..."
TORCH  ?= torch==2.13.0

.PHONY: demo test lint glyphs clean

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

# Maintainers only: re-render the embedded glyph dataset from Debian font packages.
glyphs: $(BIN)/cmkd
	apt-get install -y -q $$($(BIN)/python tools/glyph_builder.py --print-packages)
	$(BIN)/python tools/glyph_builder.py

clean:
	rm -rf $(VENV) runs .pytest_cache
