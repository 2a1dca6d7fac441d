"""The HTTP API (`nebula api`, aiohttp on :8774): authenticates, validates, turns requests
into domain commands, appends events, answers reads from the Postgres read models."""
