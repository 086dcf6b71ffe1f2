PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorelab demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

# peers for side-by-side benchmarks; lucidrains' package declares torchvision and pytorch-fid, which it does not
# need for its Unet and which would not import beside this torch build, so it goes in without dependencies
PEERS := $(VENV)/.peers
$(PEERS): $(STAMP)
	$(BIN)/pip install --quiet diffusers==0.42.1 huggingface-hub regex requests importlib_metadata filelock einops accelerate
	$(BIN)/pip install --quiet --no-deps denoising-diffusion-pytorch==2.3.4 ema-pytorch
	touch $(PEERS)

bench: $(PEERS)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache  # runs/ holds trained runs: remove it by hand
