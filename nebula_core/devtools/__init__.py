"""Developer tools: the generators of `schemas/` (JSON Schema, AsyncAPI, OpenAPI) and the
benchmarks. Nothing at run time imports this package; `nebula schemas` loads it on demand."""
