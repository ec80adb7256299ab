"""threadsync: a faithful local mirror of Assistants thread messages."""

__version__ = "0.1.0"
