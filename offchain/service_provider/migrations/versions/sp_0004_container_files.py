"""sp_catalog.container_sha256: containers are files under the SP's container_dir, content-addressed by SHA-256,
and a row keeps only their path and hash (issue 9, item 7). Rows from before keep their container_bytes and are
still served (ck_catalog_one_container_source: path or bytes).

Revision ID: sp_0004
Revises: sp_0003
Create Date: 2026-12-01 17:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from offchain.storage import columns  # noqa: F401 - the column types (Money, Bytes32, Address) rendered below


# revision identifiers, used by Alembic.
revision: str = 'sp_0004'
down_revision: Union[str, Sequence[str], None] = 'sp_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('sp_catalog', schema=None) as batch_op:
        batch_op.add_column(sa.Column('container_sha256', sa.LargeBinary(length=32), nullable=True))


def downgrade() -> None:
    """Downgrade schema (file-backed rows keep their path; code of sp_0003 read only container_bytes)."""
    with op.batch_alter_table('sp_catalog', schema=None) as batch_op:
        batch_op.drop_column('container_sha256')
