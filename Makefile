# Build, test and run the TDPM-DIP book.  `make report` and `make test` are the two entry points.
SHELL   := /bin/bash
VENV    := .venv
PY      := $(VENV)/bin/python
JB      := $(VENV)/bin/jupyter-book
STAMP   := $(VENV)/.installed
BOOK    := $(VENV)/.installed-book
# The torch/torchvision pair this project is tested with. pyproject.toml only gives lower bounds (so that an install
# on Colab keeps Colab's torch); here, in CI and in environment.yml the pair is exact. `===` compares the version
# string, so a local `+cpu` torch wheel (which torchvision and diffusers do not work with) never satisfies it.
TORCH   := "torch===2.14.1" "torchvision===0.29.2"
# cpu unless asked: `make report PROFILE=smoke|cpu|colab|paper`. colab (the report's networks at 64 px, about an
# hour on a T4) and paper (the report's full configuration, about 70-80 min on an H200, many hours on a T4) need a
# CUDA GPU and are refused on a CPU. `python -m tdpmlib.workflow.budget --profile colab` prints the estimate per notebook.
PROFILE ?= cpu

.PHONY: venv test report train train-reading book pdf site publish screenshots smoke bench clean

venv: $(STAMP)

# The pair is installed in the same pip call as the project, so that no dependency can move torch off it.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]" $(TORCH)
	touch $@

# The book's build tools (jupyter-book, Sphinx, the bibtex extension, ghp-import): the [book] extra.
$(BOOK): $(STAMP)
	$(PY) -m pip install -q -e ".[book]" $(TORCH)
	touch $@

test: venv
	$(PY) -m pytest -q tests

report: $(BOOK)
	$(PY) scripts/run_notebooks.py --profile $(PROFILE) --out notebooks
	$(MAKE) book

# Retrains the profile's two DDPMs from scratch (both schedules side by side, one thread each), resuming a
# killed run from its checkpoint; logs in results/<profile>/models/train-<schedule>.log. The cpu profile
# takes about 3 h on 2 quiet cores. `make report` then loads the networks this writes.
train: venv
	mkdir -p results/$(PROFILE)/models
	for s in linear cosine; do \
	  OMP_NUM_THREADS=1 $(PY) -m tdpmlib.workflow.train --profile $(PROFILE) --schedule $$s \
	    > results/$(PROFILE)/models/train-$$s.log 2>&1 & \
	done; wait

# Trains the variants of Example 1's training reading (chapter 04b) on two workers, one thread each, resuming or
# skipping each; logs in results/<profile>/models/reading-<worker>.log. About 75 min for the cpu profile.
train-reading: venv
	mkdir -p results/$(PROFILE)/models
	for w in 0 1; do \
	  OMP_NUM_THREADS=1 $(PY) -m tdpmlib.studies.dip_init_training --profile $(PROFILE) --worker $$w \
	    > results/$(PROFILE)/models/reading-$$w.log 2>&1 & \
	done; wait

book: $(BOOK)
	$(JB) build . -W
	@echo "Book: $(CURDIR)/_build/html/index.html"

# Optional: the whole book as one PDF (_build/pdf/book.pdf), printed by headless Chromium from the single-page
# build with a local MathJax. Installs Debian's chromium and poppler-utils and MathJax 3 (npm) when missing.
MATHJAX := _build/mathjax/node_modules/mathjax/es5
pdf: $(BOOK)
	scripts/install_pdf_tools.sh
	$(JB) build . --builder singlehtml -W
	$(PY) scripts/book_browser.py pdf --mathjax $(MATHJAX)
	pdftoppm -r 50 -png _build/pdf/book.pdf _build/pdf/page
	@echo "PDF: $(CURDIR)/_build/pdf/book.pdf (pages as PNG: _build/pdf/page-*.png)"

# The site as published (by .github/workflows/pages.yml, or by `make publish`): the HTML book with the PDF in it,
# which every page links to.
site: book pdf
	cp _build/pdf/book.pdf _build/html/book.pdf

# For those without the workflow: pushes _build/html to the gh-pages branch of REMOTE with ghp-import, refusing a
# build older than the newest notebook or results file (run `make site` first).
REMOTE ?= origin
publish: $(BOOK)
	$(PY) scripts/publish.py --remote $(REMOTE)

# A reader's check: every page of the built book, screenshotted (_build/screenshots/).
screenshots: book
	scripts/install_pdf_tools.sh
	$(PY) scripts/book_browser.py screenshots --mathjax $(MATHJAX)

# Executes every notebook into a scratch folder; notebooks/ is left untouched.
smoke: venv
	d=$${SMOKE_DIR:-/tmp/tdpm-smoke}; $(PY) scripts/run_notebooks.py --profile smoke --out $$d --param results_dir=$$d/results

bench: venv
	$(PY) -m benchmarks

clean:
	rm -rf _build
