# fieldtrace — see README.md
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
BOARD ?= unix

.PHONY: all venv sysdeps test test-fast lint bench vectors firmware flash demo clean

all: test

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

sysdeps:
	scripts/install-system-deps.sh

# The main job on embedded defaults: ~100 devices (3 on real MicroPython) against a
# real site with mutual TLS, 60 s with a link outage, a gateway SIGKILL and an SOS.
demo: venv sysdeps
	$(BIN)/python -m simulators demo

test: venv sysdeps
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not broker"

lint: venv
	$(BIN)/ruff check protocol gateway simulators firmware tests bench
	$(BIN)/mypy gateway simulators

vectors: venv
	$(BIN)/python -m protocol.vectors.make_vectors

# Benchmarks print their figures; bench/README.md records them with this command.
bench: venv
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

firmware: venv
	$(BIN)/python -m firmware.build --board $(BOARD)

# Deploy to a real board over USB (needs hardware): see firmware/README.md.
# ROMFS=1 puts the code in the ROMFS partition, where it runs in place.
flash: venv
	$(BIN)/python -m firmware.flash --port $(PORT) --device $(DEVICE) $(if $(ROMFS),--romfs)

clean:
	rm -rf build .pytest_cache .hypothesis
