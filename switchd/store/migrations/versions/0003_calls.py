"""Calls: active calls (for crash recovery), node heartbeats, trunk number rules.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 21:54:24.650402
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('nodes',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('heartbeat_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_nodes'))
    )
    op.create_table('active_calls',
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('node', sa.String(length=100), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=True),
    sa.Column('trunk_id', sa.Integer(), nullable=True),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('caller', sa.String(length=64), nullable=True),
    sa.Column('callee', sa.String(length=64), nullable=True),
    sa.Column('start_time', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('answer_time', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('rate', switchd.store.types.Money(precision=20, scale=6), nullable=True),
    sa.Column('connection_fee', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('increment_first', sa.Integer(), nullable=False),
    sa.Column('increment_next', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_active_calls_account_id_accounts')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_active_calls_service_id_services')),
    sa.ForeignKeyConstraint(['trunk_id'], ['trunks.id'], name=op.f('fk_active_calls_trunk_id_trunks')),
    sa.PrimaryKeyConstraint('call_id', name=op.f('pk_active_calls'))
    )
    with op.batch_alter_table('active_calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_active_calls_node'), ['node'], unique=False)

    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('strip_digits', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('add_prefix', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('e164', sa.Boolean(), nullable=False, server_default=sa.false()))



def downgrade() -> None:
    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.drop_column('e164')
        batch_op.drop_column('add_prefix')
        batch_op.drop_column('strip_digits')

    with op.batch_alter_table('active_calls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_active_calls_node'))

    op.drop_table('active_calls')
    op.drop_table('nodes')
