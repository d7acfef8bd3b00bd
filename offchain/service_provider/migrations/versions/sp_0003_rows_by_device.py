"""Usage rows and batches keyed by (device, serial) as well as by batch (issue 9, item 3): sp_batches.device (the
batch's signer, which the batch digest `id` does not cover), back-filled from the batch's first usage log; the
unique keys become (device, serial, seq) and (device, serial, first_seq), so another device's rows for a serial
never block the logs of that serial's own device.

Revision ID: sp_0003
Revises: sp_0002
Create Date: 2026-12-01 17:10:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from offchain.storage import columns  # noqa: F401 - the column types (Money, Bytes32, Address) rendered below


# revision identifiers, used by Alembic.
revision: str = 'sp_0003'
down_revision: Union[str, Sequence[str], None] = 'sp_0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add sp_batches.device, fill it from the batch's first log row, re-key both tables by device."""
    with op.batch_alter_table('sp_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=42), nullable=True))
    op.execute("UPDATE sp_batches SET device = (SELECT l.device FROM sp_usage_logs l "
               "WHERE l.serial = sp_batches.serial AND l.seq = sp_batches.first_seq)")
    with op.batch_alter_table('sp_batches', schema=None) as batch_op:
        batch_op.alter_column('device', existing_type=sa.String(length=42), nullable=False)
        batch_op.drop_constraint('uq_sp_batch_serial_seq', type_='unique')
        batch_op.create_unique_constraint('uq_sp_batch_device_serial_seq', ['device', 'serial', 'first_seq'])
    with op.batch_alter_table('sp_usage_logs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_sp_usage_serial_seq', type_='unique')
        batch_op.create_unique_constraint('uq_sp_usage_device_serial_seq', ['device', 'serial', 'seq'])


def downgrade() -> None:
    """Back to one key per serial (refused while two devices hold rows for the same serial and seq)."""
    with op.batch_alter_table('sp_usage_logs', schema=None) as batch_op:
        batch_op.drop_constraint('uq_sp_usage_device_serial_seq', type_='unique')
        batch_op.create_unique_constraint('uq_sp_usage_serial_seq', ['serial', 'seq'])
    with op.batch_alter_table('sp_batches', schema=None) as batch_op:
        batch_op.drop_constraint('uq_sp_batch_device_serial_seq', type_='unique')
        batch_op.create_unique_constraint('uq_sp_batch_serial_seq', ['serial', 'first_seq'])
        batch_op.drop_column('device')
