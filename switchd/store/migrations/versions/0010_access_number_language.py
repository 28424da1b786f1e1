"""Callback IVR language per access number; a client's language may be unset.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 04:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=2), nullable=True))
    with op.batch_alter_table('callback_clients', schema=None) as batch_op:
        batch_op.alter_column('language', existing_type=sa.String(length=2), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE callback_clients SET language = 'en' WHERE language IS NULL")
    with op.batch_alter_table('callback_clients', schema=None) as batch_op:
        batch_op.alter_column('language', existing_type=sa.String(length=2), nullable=False)
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.drop_column('language')
