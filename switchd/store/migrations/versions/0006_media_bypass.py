"""Media bypass per SIP connection.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 01:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('media_bypass', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.drop_column('media_bypass')
