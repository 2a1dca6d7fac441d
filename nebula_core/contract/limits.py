"""Limits shared by the services that enforce them and the clients that respect them."""

from __future__ import annotations

#: User-data is at most 64 KiB (DESIGN.md): the API refuses more, the CLI says so first.
USER_DATA_MAX_BYTES = 64 * 1024
#: The seed bucket holds user-data as a JSON `InstanceSeed` with the token, where escaping
#: can make a byte six (``\u0001``): its limit leaves room for the worst case.
SEED_MAX_BYTES = 8 * USER_DATA_MAX_BYTES
#: The largest HTTP request body the API reads (64 KiB of user-data at worst escaping fits).
API_BODY_MAX_BYTES = 1 << 20
#: The largest request body the metadata service reads (a phone-home form).
META_BODY_MAX_BYTES = 64 * 1024
#: How much of a serial console's tail is sent when nobody says, and at most.
CONSOLE_DEFAULT_BYTES = 64 * 1024
CONSOLE_MAX_BYTES = 1 << 20
