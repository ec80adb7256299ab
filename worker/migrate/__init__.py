"""Migrating mirrored threads into the Conversations API (issue 19).

- :mod:`mapping`: thread messages -> input items, the conversation's metadata (pure);
- :mod:`ledger`: the exactly-once record in the mirror (thread -> conversation, batches);
- :mod:`target`: the Conversations client (the shared retry policy, pacer, error translation);
- :mod:`run`: ``threadsync migrate``: planning, sending, settling unknown outcomes;
- :mod:`verify`: comparing each conversation with the mirror.
"""
