"""Column types and the declarative root shared by every role's tables: `Money`, `Bytes32`, `Address`, `Base`.

Each role declares its tables on its own abstract subclass of `Base` with its own `MetaData` (see
`role_base`), so no module and no schema holds the tables of two roles. Money is an `int` in minor units;
`Money` refuses floats and out-of-range values before they reach SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Dialect, LargeBinary, MetaData, Numeric, String
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import JSON, TypeDecorator

from offchain.core.errors import InvalidAmount

SQLITE_INT_MAX = 2**63 - 1
MONEY_MAX = 10**38 - 1  # Numeric(38,0); uint96 (< 8e28) always fits


class Money(TypeDecorator[int]):
    """Integer minor units: NUMERIC(38,0) on PostgreSQL, INTEGER (int64) on SQLite; always `int` in Python."""

    impl = Numeric(38, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(38, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidAmount("money must be an int in minor units", value=repr(value))
        limit = SQLITE_INT_MAX if dialect.name == "sqlite" else MONEY_MAX
        if abs(value) > limit:
            raise InvalidAmount("amount exceeds the database column", value=value, limit=limit)
        return value if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def money(value: Any) -> int:
    """Convert an aggregate (SUM may return Decimal, int or None) to int minor units."""
    return 0 if value is None else int(value)


def require_money(value: Any, field: str, *, positive: bool = False) -> int:
    """Check an amount before it reaches SQL (where the Money column would wrap the error in StatementError)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0) or value > MONEY_MAX:
        raise InvalidAmount(f"{field} must be a {'positive ' if positive else ''}int in minor units", field=field,
                            value=repr(value))
    return value


Bytes32 = LargeBinary(32)
Address = String(42)


class Base(DeclarativeBase):
    """The declarative root: shared type map only. Tables live on a role's `role_base()` subclass."""

    type_annotation_map = {dict[str, Any]: JSON, bytes: LargeBinary}


def status_check(column: str, values: Sequence[str]) -> CheckConstraint:
    """CHECK that `column` holds one of `values` (named ck_<column>_values)."""
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"ck_{column}_values")


# Named constraints from the first migration on: Alembic's batch mode (SQLite table rebuilds) and a later
# revision can only drop or alter a constraint it can name. CHECKs are always named explicitly (status_check).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """A fresh MetaData for one role's tables (set it as `metadata` on the role's abstract base)."""
    return MetaData(naming_convention=NAMING_CONVENTION)
