"""user_balance_entries.kind admits 'release': a revoked or expired device's unsettled rest returned to the user
(IssueLogReleased), so the CC can issue it again.

Revision ID: cc_0003
Revises: cc_0002
Create Date: 2026-12-01 15:00:00.000000

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'cc_0003'
down_revision: Union[str, Sequence[str], None] = 'cc_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WITH_RELEASE = "kind IN ('deposit', 'allocation', 'carry', 'release')"
WITHOUT_RELEASE = "kind IN ('deposit', 'allocation', 'carry')"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('user_balance_entries', schema=None) as batch_op:
        batch_op.drop_constraint('ck_kind_values', type_='check')
        batch_op.create_check_constraint('ck_kind_values', WITH_RELEASE)


def downgrade() -> None:
    """Downgrade schema (refused while release entries exist: they would no longer satisfy the check)."""
    with op.batch_alter_table('user_balance_entries', schema=None) as batch_op:
        batch_op.drop_constraint('ck_kind_values', type_='check')
        batch_op.create_check_constraint('ck_kind_values', WITHOUT_RELEASE)
