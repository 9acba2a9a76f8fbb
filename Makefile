# Two entry points for a fresh machine with only Python 3 and make:
#   make demo   set up .venv and run the main job on the offline default
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

DEMO_DATA := data/demo

# Generate the offline data set once: 1,000 training identities x 30 images, 200 held-out
# identities for 2,000 verification pairs, 56x56 pixels.
$(DEMO_DATA)/manifest.json: $(STAMP)
	$(VENV)/bin/partial-fc data synth --out $(DEMO_DATA) --identities 1000 --images-per-identity 30 \
		--size 56 --heldout-identities 200 --pairs 2000 --seed 0 --quiet

# Train on 2 CPU ranks (torchrun, gloo) with the sharded head at sample rate 0.5, evaluate the
# held-out identities, write the checkpoint under runs/demo. Another loss or margin:
#   make demo DEMO_ARGS="--set loss.name=triplet"
DEMO_ARGS ?=
demo: $(DEMO_DATA)/manifest.json
	rm -rf runs/demo
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc_per_node 2 -m partial_fc.cli \
		train --config configs/demo.yaml --resume none $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
