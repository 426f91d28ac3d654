# The two commands a newcomer needs: `make run` and `make test`. Both create the environment.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := client/node/node_modules/.installed
AXE_STAMP := tests/browser/node_modules/.installed
DATA_DIR ?= ./data
GRPC_ADDR ?= 127.0.0.1:50051
HTTP_ADDR ?= 127.0.0.1:8080

.PHONY: run test fuzz mutate venv protos check-protos lint breaking clean bench openapi browser console-screenshot

## The three distributions, editable: the generated stubs (api/pyproject.toml), the client
## (client/pyproject.toml) and the server that depends on both. The client alone: pip install ./api ./client.
$(STAMP): pyproject.toml api/pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./api -e ./client -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## The Node.js client's dependencies, exactly as client/node/package-lock.json pins them.
$(NODE_STAMP): client/node/package.json client/node/package-lock.json
	npm ci --prefix client/node --no-audit --no-fund
	touch $(NODE_STAMP)

## axe-core for the console's accessibility test, exactly as tests/browser/package-lock.json pins it.
$(AXE_STAMP): tests/browser/package.json tests/browser/package-lock.json
	npm ci --prefix tests/browser --no-audit --no-fund
	touch $(AXE_STAMP)

## Start the service on the embedded default (SQLite + local files under $(DATA_DIR)), gRPC and HTTP.
run: $(STAMP)
	$(BIN)/iotda-export serve --data-dir $(DATA_DIR) --grpc-addr $(GRPC_ADDR) --http-addr $(HTTP_ADDR)

## Everything CI checks: stubs fresh, protos lint-clean, no unannounced breaking change since the
## previous commit (scripts/check_breaking.py), every test (the Node.js client test needs npm ci,
## the console's browser tests Debian's headless Chromium and axe-core).
test: $(STAMP) $(NODE_STAMP) $(AXE_STAMP) browser check-protos lint breaking
	$(BIN)/python -m pytest
	$(BIN)/python scripts/mutate.py --ci

## Mutation testing of the rule modules (cosmic-ray, scripts/mutate.py; docs/testing.md): every target,
## compared with mutation/baseline.json (tens of minutes). `make test` runs the CI subset.
mutate: $(STAMP)
	$(BIN)/python scripts/mutate.py

## Debian's Chromium and chromedriver for the console's browser tests (tests/test_console.py),
## installed once: nothing happens when both are there.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "installing chromium and chromium-driver (the console's browser tests)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

## The hostile-input tests with many more examples (minutes, not seconds).
fuzz: $(STAMP)
	IOTDA_FUZZ_PROFILE=long $(BIN)/python -m pytest -q tests/test_hostile_input.py

## The benchmarks of issue 5: each figure against its baseline measured in the same run; writes
## bench/RESULTS.md (several minutes; `$(BIN)/python -m bench --smoke` is the quick run CI makes).
bench: $(STAMP)
	$(BIN)/python -m bench

## Regenerate the Python stubs in api/ from protos/ (commit the result).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

## Regenerate the OpenAPI document from the protos: docs/openapi.json and the copy /openapi.json serves
## (commit the result; tests/test_openapi.py fails when it is stale).
openapi: $(STAMP)
	$(BIN)/python scripts/gen_openapi.py

## Retake docs/images/console.png: the console in headless Chromium against a server of its own.
console-screenshot: $(STAMP) browser
	$(BIN)/python scripts/console_screenshot.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

lint: $(STAMP)
	$(BIN)/buf lint

## buf breaking (WIRE_JSON) of protos/ against the previous commit; a deliberate break needs the
## commit trailer `Proto-Breaking-Change: <reason>` (docs/contract-checks.md).
breaking: $(STAMP)
	$(BIN)/python scripts/check_breaking.py

clean:
	rm -rf $(VENV) build api/build client/build *.egg-info api/*.egg-info client/*.egg-info server/*.egg-info
