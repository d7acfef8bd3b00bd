"""sp_catalog.policy_id (indexed): the policy id usage logs name, so a usage upload's price look-up reads only the
policies its batch names instead of every catalog row (issue 9, item 7); back-filled here from each row's
(content_id, version) as keccak(abi.encode(bytes32 contentId, uint32 version)).

Revision ID: sp_0002
Revises: sp_0001
Create Date: 2026-12-01 17:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from offchain.core.messages import policy_id
from offchain.storage import columns  # noqa: F401 - the column types (Money, Bytes32, Address) rendered below


# revision identifiers, used by Alembic.
revision: str = 'sp_0002'
down_revision: Union[str, Sequence[str], None] = 'sp_0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add the column, fill it from every existing row, then make it required and index it."""
    with op.batch_alter_table('sp_catalog', schema=None) as batch_op:
        batch_op.add_column(sa.Column('policy_id', sa.LargeBinary(length=32), nullable=True))
    catalog = sa.table('sp_catalog', sa.column('content_id', sa.LargeBinary(32)), sa.column('version', sa.Integer),
                       sa.column('policy_id', sa.LargeBinary(32)))
    connection = op.get_bind()
    keys = connection.execute(sa.select(catalog.c.content_id, catalog.c.version)).all()  # two small columns a row
    for content_id, version in keys:
        connection.execute(catalog.update()
                           .where(catalog.c.content_id == content_id, catalog.c.version == version)
                           .values(policy_id=policy_id(bytes(content_id), int(version))))
    with op.batch_alter_table('sp_catalog', schema=None) as batch_op:
        batch_op.alter_column('policy_id', existing_type=sa.LargeBinary(length=32), nullable=False)
        batch_op.create_index(batch_op.f('ix_sp_catalog_policy_id'), ['policy_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema (the column is derived from the primary key)."""
    with op.batch_alter_table('sp_catalog', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sp_catalog_policy_id'))
        batch_op.drop_column('policy_id')
