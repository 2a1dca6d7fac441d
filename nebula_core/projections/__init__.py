"""Read models in Postgres: one small module per table family (each a table of event type
→ handler), the projector that applies them exactly once, its checkpoint, and the SQL
migrations with their runner."""
