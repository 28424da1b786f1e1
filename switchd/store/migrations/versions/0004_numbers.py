"""The switch's own numbers: INCOMING delivery and REDIRECTION targets.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 22:08:55.407255
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('numbers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=32), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('sip_account_id', sa.Integer(), nullable=True),
    sa.Column('redirect_always', sa.String(length=32), nullable=True),
    sa.Column('redirect_busy', sa.String(length=32), nullable=True),
    sa.Column('redirect_no_answer', sa.String(length=32), nullable=True),
    sa.Column('redirect_unregistered', sa.String(length=32), nullable=True),
    sa.Column('no_answer_seconds', sa.Integer(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_numbers_service_id_services')),
    sa.ForeignKeyConstraint(['sip_account_id'], ['sip_accounts.id'], name=op.f('fk_numbers_sip_account_id_sip_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_numbers')),
    sa.UniqueConstraint('number', name=op.f('uq_numbers_number'))
    )
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_numbers_service_id'), ['service_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('numbers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_numbers_service_id'))

    op.drop_table('numbers')
