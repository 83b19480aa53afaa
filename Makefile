# Two commands do everything on a fresh machine with python3: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: venv demo test clean chromium

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev,bnb,caption,ui]'
	touch $@

demo: venv
	$(BIN)/lorakit demo

test: venv chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile  # two workers (CI has 2 cores); a test file stays on one worker

# the browser tests drive the OS's Chromium (Playwright's own download is not used); they skip, saying why, without it
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make test: chromium is not installed and cannot be here (not root or no apt-get): browser tests skip"; }

clean:
	rm -rf $(VENV) demo-output .pytest_cache test-artifacts
