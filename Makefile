# The two commands a newcomer needs: `make demo` and `make test`. Both install what they need first.
VENV := .venv
PY := $(VENV)/bin/python
AMBIT := $(VENV)/bin/ambit

.PHONY: setup demo test unit lab soak lint bench bench-tracing bench-quick clean proto cluster-test

setup:
	@bash scripts/setup.sh

demo: setup
	@$(AMBIT) lab demo

# Unit tests share no host state, so they run on 4 workers: on 2 cores, 3 workers left the CPU idle
# much of the time (they wait on sockets and subprocesses) and took 6 minutes; 4 to 6 keep it busy.
# Lab and e2e tests build netns labs named by their worker's pid, so three workers run them side by
# side, a module per worker (a module's lab stays on one worker): with two, the CPU was a third idle
# (labs start, then wait on traffic and timeouts) and the phase took 9-10 minutes, with three 6.6. The
# few tests that compare the whole host before and after (marked host_exclusive) run last, alone.
# LAB_WORKERS=0 runs everything serially.
LAB_WORKERS ?= 3
test: setup
	@$(PY) -m pytest tests/unit -n 4 $(PYTEST_ARGS); u=$$?; \
	$(PY) -m pytest tests/lab tests/e2e -n $(LAB_WORKERS) --dist loadfile -m "not host_exclusive" $(PYTEST_ARGS); l=$$?; \
	$(PY) -m pytest tests/lab tests/e2e -m host_exclusive $(PYTEST_ARGS); h=$$?; \
	exit $$(( u || l || h ))

unit: setup
	@$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lab: setup
	@$(PY) -m pytest tests/lab tests/e2e $(PYTEST_ARGS)

# Soak and scale tests at full size (CI runs them bounded, within `make test`).
soak: setup
	@AMBIT_SOAK=full $(PY) -m pytest tests/lab tests/e2e -m soak $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check .

# The e2e scenarios on a three-VM k3s cluster (vagrant/README.md). CLUSTER_ARGS: --provider libvirt|virtualbox,
# --destroy, -- PYTEST_ARGS.
cluster-test:
	@bash vagrant/cluster-test.sh $(CLUSTER_ARGS)

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

bench-tracing: setup
	@$(PY) -m bench --scenario ambit-waypoint --scenario ambit-waypoint-traced $(BENCH_ARGS)

bench-quick: setup
	@$(PY) -m bench --quick

proto: setup
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --grpclib_python_out=. --pyi_out=. ambit/api/config.proto ambit/api/ca.proto ambit/api/debug.proto ambit/api/ext_authz.proto

clean:
	-@$(AMBIT) lab down 2>/dev/null || true
