# The two commands of the README. Each prepares what it needs itself
# (Debian packages, .venv, the project) through ops/bootstrap.sh.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: up test bootstrap schemas

bootstrap:
	@./ops/bootstrap.sh

up: bootstrap
	$(VENV)/bin/nebula up $(UP_ARGS)

test:
	@./ops/bootstrap.sh --test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Regenerate the published contract under schemas/ from the code.
schemas: bootstrap
	$(VENV)/bin/nebula schemas --write
