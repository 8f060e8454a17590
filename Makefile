# Impressionist: `make run` (set up everything, start the app) and `make test`.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run setup install test test-fast bench clean-venv

run: setup
	@echo ""
	@echo "Impressionist on http://localhost:8501"
	@echo "Demo accounts (user / password):"
	@echo "  radiologist / demo-radiologist     radiologist2 / demo-radiologist2"
	@echo "  coordinator / demo-coordinator     admin / demo-admin"
	$(PY) -m streamlit run app.py --server.address localhost --server.port 8501

setup: install
	$(PY) -m core setup

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q -r requirements.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(PIP) install -q --no-deps -r requirements-nodeps.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c "import torch, transformers, peft, trl, duckdb, streamlit, bcrypt, gguf" \
		|| (echo "install failed: see the pip output above" >&2; exit 1)
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Two workers (pytest-xdist): most tests wait on subprocesses, the database file or a model on
# one core. `make test-fast` leaves out the tests marked slow (training, kill -9, subprocess CLIs,
# the browser): a minute or two, for the edit-test loop.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=15 tests

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadgroup -m "not slow" tests

bench: setup
	$(PY) bench/app_latency.py

clean-venv:
	rm -rf .venv
