"""Per-customer call limits on personal accounts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 22:14:47.605531
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('call_limit', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('cps_limit', sa.Integer(), nullable=False, server_default='0'))



def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('cps_limit')
        batch_op.drop_column('call_limit')

