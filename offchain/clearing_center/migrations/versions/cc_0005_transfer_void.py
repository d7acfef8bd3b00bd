"""transfer_requests.status admits 'void': a request id the chain no longer has (the transaction that assigned it
was reorged out, and the request landed again with other ids, or not at all). The transfer worker re-derives
its rows from the canonical chain; a void row is never delivered, and the same id seen again revives it.

Revision ID: cc_0005
Revises: cc_0004
Create Date: 2026-12-01 18:00:00.000000

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = 'cc_0005'
down_revision: Union[str, Sequence[str], None] = 'cc_0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

WITH_VOID = "status IN ('requested', 'sent_to_bank', 'confirmed', 'void')"
WITHOUT_VOID = "status IN ('requested', 'sent_to_bank', 'confirmed')"


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('transfer_requests', schema=None) as batch_op:
        batch_op.drop_constraint('ck_status_values', type_='check')
        batch_op.create_check_constraint('ck_status_values', WITH_VOID)


def downgrade() -> None:
    """Downgrade schema (refused while void rows exist: they would no longer satisfy the check)."""
    with op.batch_alter_table('transfer_requests', schema=None) as batch_op:
        batch_op.drop_constraint('ck_status_values', type_='check')
        batch_op.create_check_constraint('ck_status_values', WITHOUT_VOID)
