# The two commands of the README. Each prepares what it needs itself
# (Debian packages, .venv, the project) through ops/bootstrap.sh.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: up test bootstrap schemas

bootstrap:
	@./ops/bootstrap.sh

# As root, libvirtd is started too (without systemd if need be), so VMs really boot.
up: bootstrap
	@if [ "$$(id -u)" = 0 ]; then ./ops/host/libvirt-up.sh "$${NEBULA_STATE_DIR:-/var/lib/nebula}" || echo "make up: libvirtd is not available; nebula up will say what it does instead"; fi
	$(VENV)/bin/nebula up $(UP_ARGS)

test:
	@./ops/bootstrap.sh --test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Regenerate the published contract under schemas/ from the code.
schemas: bootstrap
	$(VENV)/bin/nebula schemas --write
