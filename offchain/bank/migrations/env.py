"""Alembic environment of the bank tables (the shared body is offchain.storage.migrate.run_env)."""

from offchain.storage.migrate import run_env

run_env()
