# credflow: `make demo` sets everything up and shows the flows; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
CREDFLOW := $(VENV)/bin/credflow

.PHONY: demo dev down status test bench model-columns system-deps test-services venv clean

demo: system-deps venv
	$(CREDFLOW) local up
	$(CREDFLOW) local seed
	@echo; echo "== credflow mpf audit: the old system's MPF (nesting dolls, Lamb/Lambert mix-up, twins)"
	-$(CREDFLOW) mpf audit
	@echo; echo "== credflow sync: every sensor once, every requested run in-process"
	@echo "   (one staged CSV has the wrong columns: its run fails on purpose and it stays in staging)"
	-$(CREDFLOW) sync
	@echo; echo "== credflow tables audit: the rejected upload waits in staging"
	-$(CREDFLOW) tables audit
	@echo; echo "== credflow feeds status: Drive sheets -> tables (bad rows rejected and listed; a corrected re-upload updates rows with history)"
	$(CREDFLOW) feeds status
	@echo; echo "== credflow mpf audit: credflow's folders are by id; the old folders remain"
	-$(CREDFLOW) mpf audit
	@echo; echo "== credflow mpf repair"
	$(CREDFLOW) mpf repair
	@echo; echo "== credflow mpf audit, after the repair"
	$(CREDFLOW) mpf audit
	@echo; echo "== credflow lineage t-1001 (Nicholas Lamb)"
	$(CREDFLOW) lineage t-1001
	@echo
	@echo "The local stack stays up. Next:"
	@echo "  make dev                          Dagster UI on http://127.0.0.1:3000, sensors running"
	@echo '  eval "$$($(CREDFLOW) local env)"   reach S3, SFTP and Drive from this shell'
	@echo "  make down                         stop the stack"

dev: system-deps venv
	$(CREDFLOW) dev

down: venv
	$(CREDFLOW) local down

status: venv
	$(CREDFLOW) local status

# Three workers on two cores: the suite mostly waits on its services (its CPU is 45 % of two
# cores' time with two workers: 9 m 36 s, against 7 m 12 s with three); each worker has its own
# local stack, and the UI stack's modules, 7 minutes on one worker, set the floor.
TEST_WORKERS ?= 3
test: system-deps venv test-services
	$(VENV)/bin/pytest -n $(TEST_WORKERS)

# Each benchmark prints its table; results and analysis in bench/RESULTS.md. QUICK=1 for small sizes.
BENCHMARKS := provider_landing feed_ingest sensor_scale drive_changes mpf_throughput instance_prune daemon_throughput
bench: system-deps venv
	-@scripts/test-services.sh   # PostgreSQL figures too, when a server can be started
	for b in $(BENCHMARKS); do $(VENV)/bin/python bench/$$b.py $(if $(QUICK),--quick,) || exit 1; done

# After editing a model in credflow_assets/drive_feeds/schemas.py: the column digest the
# definitions read instead of importing pandera (credflow_assets/drive_feeds/model_columns.py).
model-columns: venv
	$(VENV)/bin/python -c 'from credflow_assets.drive_feeds.model_columns import write_digest; print(write_digest())'

system-deps:
	@scripts/system-deps.sh $(if $(filter test,$(MAKECMDGOALS)),--test,)

test-services:
	@scripts/test-services.sh

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "credflow needs Python 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[local,test,postgres,celery,k8s]'
	touch $@

clean:
	-$(CREDFLOW) local down
	rm -rf $(VENV) .credflow
