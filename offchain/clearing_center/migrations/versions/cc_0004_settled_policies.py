"""cc_settled_policies: the policy ids of settled receive logs, kept as logs settle (transfer candidates), filled
here once from the receive logs already settled.

Revision ID: cc_0004
Revises: cc_0003
Create Date: 2026-12-01 16:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.types import JSON

from offchain.storage import columns  # noqa: F401 - the column types (Money, Bytes32, Address) rendered below


# revision identifiers, used by Alembic.
revision: str = 'cc_0004'
down_revision: Union[str, Sequence[str], None] = 'cc_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

BACKFILL_CHUNK = 5_000  # receive logs read per query (their JSON), so the backfill's memory stays bounded


def upgrade() -> None:
    """Upgrade schema, then record the policies of every receive log settled so far."""
    settled_policies = op.create_table(
        'cc_settled_policies',
        sa.Column('policy_id', sa.LargeBinary(length=32), nullable=False),
        sa.Column('first_settled_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('policy_id', name=op.f('pk_cc_settled_policies'))
    )
    receive_logs = sa.table('receive_logs', sa.column('id', sa.LargeBinary(32)), sa.column('status', sa.String),
                            sa.column('received_at', sa.BigInteger), sa.column('usage_batch_json', JSON))
    connection = op.get_bind()
    first_seen: dict[bytes, int] = {}
    after = b""
    while True:
        rows = connection.execute(sa.select(receive_logs.c.id, receive_logs.c.received_at,
                                            receive_logs.c.usage_batch_json)
                                  .where(receive_logs.c.status == 'settled', receive_logs.c.id > after)
                                  .order_by(receive_logs.c.id).limit(BACKFILL_CHUNK)).all()
        if not rows:
            break
        for _id, received_at, batch in rows:
            for pid in batch["policyIds"]:
                key = bytes.fromhex(pid[2:])
                first_seen[key] = min(first_seen.get(key, received_at), received_at)
        after = rows[-1][0]
    if first_seen:
        op.bulk_insert(settled_policies, [{'policy_id': pid, 'first_settled_at': at}
                                          for pid, at in sorted(first_seen.items())])


def downgrade() -> None:
    """Downgrade schema (the set is derived data: cc_0003's code rebuilt it from the receive logs each round)."""
    op.drop_table('cc_settled_policies')
