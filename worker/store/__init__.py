"""The mirror: SQLModel tables, the engine, migrations and the queries threadsync runs."""
