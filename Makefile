# The two commands of the README. Each prepares what it needs itself
# (Debian packages, .venv, the project) through ops/bootstrap.sh.
VENV ?= .venv
PYTEST_ARGS ?=
PACKAGES = nebula_core nebula_node nebula_meta

.PHONY: up test check bootstrap schemas

bootstrap:
	@./ops/bootstrap.sh

# As root, libvirtd is started too (without systemd if need be), so VMs really boot.
up: bootstrap
	@if [ "$$(id -u)" = 0 ]; then ./ops/host/libvirt-up.sh "$${NEBULA_STATE_DIR:-/var/lib/nebula}" || echo "make up: libvirtd is not available; nebula up will say what it does instead"; fi
	$(VENV)/bin/nebula up $(UP_ARGS)

# The habits CI keeps: the layering contracts (pyproject's [tool.importlinter]), ruff's
# lint and format check, and mypy; then the whole suite against real servers.
test:
	@./ops/bootstrap.sh --test
	@$(MAKE) --no-print-directory check
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

check:
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check $(PACKAGES) tests
	$(VENV)/bin/ruff format --check $(PACKAGES) tests
	$(VENV)/bin/mypy

# Regenerate the published contract under schemas/ from the code.
schemas: bootstrap
	$(VENV)/bin/nebula schemas --write --out schemas
