"""Persistence: the ORM tables of the design notes, state machines, sessions."""
