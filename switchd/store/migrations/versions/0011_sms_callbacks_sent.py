"""Which status callbacks of an HTTP message are done, so a restart sends the others.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

WAITING = "origin_kind = 'http' AND callbacks_sent < 2"


def upgrade() -> None:
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('callbacks_sent', sa.Integer(), server_default=sa.text('0'), nullable=False))
    # Messages from before: their callbacks were the old code's business. Only the
    # end callback of a message still under way is left to send.
    # Only HTTP messages have callbacks (and only they are in the index): the rest keep 0.
    op.execute("UPDATE sms_messages SET callbacks_sent = CASE WHEN status = 'ENROUTE' THEN 1 ELSE 7 END "
               "WHERE origin_kind = 'http'")
    op.create_index('ix_sms_messages_callbacks_waiting', 'sms_messages', ['node', 'id'], unique=False,
                    postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING))


def downgrade() -> None:
    op.drop_index('ix_sms_messages_callbacks_waiting', table_name='sms_messages')
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_column('callbacks_sent')
