# Two commands set up everything on a fresh machine: `make run` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
# Test files run on this many xdist workers (a file's tests stay on one worker: its module fixtures build once),
# handed out slowest tier first (tests/conftest.py), not by their number of tests. Three on two cores: many tests
# wait on a Prefect server, a subprocess or a lock (the whole suite, quiet machine: 6 min 46 s on 2, 5 min 54 s on 3).
WORKERS ?= 3

.PHONY: run test test-fast env bench clean deploy

env: $(STAMP)

# The pinned CPU torch goes in first so the project's `torch>=2.2` pulls nothing more.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip show torch >/dev/null 2>&1 || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,dask]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gruviz demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# The tests that need no Prefect server, browser, Dask cluster, moto S3 server, nor are slow (tiers: tests/conftest.py).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not prefect and not browser and not s3 and not dask and not slow"

# One benchmark at a time (2 cores): each prints one JSON line of ratios measured in the same run.
bench: $(STAMP)
	for b in ingest train extract stats report; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) gruviz-data

# Register the deployments of prefect.yaml with the Prefect server at PREFECT_API_URL.
# The deployments carry these settings as job variables (env), with the values they have here:
#   GRUVIZ_HOME              store root                        (default ./gruviz-data, made absolute)
#   GRUVIZ_SOURCES           JSON list of directories/globs the nightly ingests  (default [] = none)
#   GRUVIZ_TIMEZONE          schedule timezone; the night is the scheduled start in it
#   GRUVIZ_REPORTS_BASE_URL  base URL of the published reports (the email's link)
#   GRUVIZ_RECIPIENTS        JSON list of email recipients (default [] = no email)
#   GRUVIZ_SETTINGS_FILE     dotenv file on the worker with any other GRUVIZ_ setting (SMTP, device...)
# e.g. make deploy GRUVIZ_HOME=/srv/gruviz GRUVIZ_SOURCES='["/srv/forms/incoming"]'
GRUVIZ_HOME             ?= $(CURDIR)/gruviz-data
GRUVIZ_SOURCES          ?= []
GRUVIZ_TIMEZONE         ?= Australia/Sydney
GRUVIZ_REPORTS_BASE_URL ?= http://127.0.0.1:8765
GRUVIZ_RECIPIENTS       ?= []
GRUVIZ_SETTINGS_FILE    ?=
deploy: $(STAMP)
	$(VENV)/bin/prefect work-pool create gruviz-process --type process --overwrite
	GRUVIZ_REPO=$(CURDIR) GRUVIZ_TIMEZONE='$(GRUVIZ_TIMEZONE)' GRUVIZ_HOME='$(abspath $(GRUVIZ_HOME))' \
	GRUVIZ_SOURCES='$(GRUVIZ_SOURCES)' GRUVIZ_REPORTS_BASE_URL='$(GRUVIZ_REPORTS_BASE_URL)' \
	GRUVIZ_RECIPIENTS='$(GRUVIZ_RECIPIENTS)' GRUVIZ_SETTINGS_FILE='$(GRUVIZ_SETTINGS_FILE)' \
	$(VENV)/bin/prefect --no-prompt deploy --all
