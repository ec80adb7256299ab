"""The sync engine: a thread's pages into the mirror, ordinary passes and full reconciles."""
