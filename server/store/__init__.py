"""Stores: one Protocol, SQLite and PostgreSQL implementations."""
