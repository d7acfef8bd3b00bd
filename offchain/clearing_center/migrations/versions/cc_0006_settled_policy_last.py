"""cc_settled_policies.last_settled_at: when a receive log of the policy last settled, so a transfer round views
only the policies whose accrued fees can have grown since its last round (not every policy ever settled). Rows
from before take their first_settled_at.

Revision ID: cc_0006
Revises: cc_0005
Create Date: 2026-12-01 18:30:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'cc_0006'
down_revision: Union[str, Sequence[str], None] = 'cc_0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema: the column, filled from first_settled_at, then NOT NULL."""
    with op.batch_alter_table('cc_settled_policies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_settled_at', sa.BigInteger(), nullable=True))
    op.execute("UPDATE cc_settled_policies SET last_settled_at = first_settled_at")
    with op.batch_alter_table('cc_settled_policies', schema=None) as batch_op:
        batch_op.alter_column('last_settled_at', existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    """Downgrade schema (derived data: cc_0005's transfer rounds viewed every settled policy)."""
    with op.batch_alter_table('cc_settled_policies', schema=None) as batch_op:
        batch_op.drop_column('last_settled_at')
