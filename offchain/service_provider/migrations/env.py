"""Alembic environment of the service_provider tables (the shared body is offchain.storage.migrate.run_env)."""

from offchain.storage.migrate import run_env

run_env()
