"""SMS engine: message ids and origins, the upstream part queue, the customer
outbox (receipts and MO), the anti-fraud sending counters.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 02:00:00
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('message_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('origin_kind', sa.String(length=8), nullable=False, server_default='smpp'))
        batch_op.add_column(sa.Column('connection_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('client_reference', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('node', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('price', switchd.store.types.Money(precision=20, scale=6), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('scheduled_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('expires_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('done_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True))
    # Rows written before this revision get their row id as message id.
    op.execute("UPDATE sms_messages SET message_id = CAST(id AS VARCHAR(64)) WHERE message_id IS NULL")
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.alter_column('message_id', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_sms_messages_message_id'), ['message_id'])

    op.create_table('sms_parts',
    sa.Column('id', BigId, nullable=False),
    sa.Column('sms_message_id', BigId, nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=100), nullable=False),
    sa.Column('smpp_link_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('short_message', sa.LargeBinary(), nullable=False),
    sa.Column('in_payload', sa.Boolean(), nullable=False),
    sa.Column('data_coding', sa.Integer(), nullable=False),
    sa.Column('esm_class', sa.Integer(), nullable=False),
    sa.Column('registered_delivery', sa.Integer(), nullable=False),
    sa.Column('tlvs', sa.JSON(), nullable=False),
    sa.Column('upstream_message_id', sa.String(length=65), nullable=True),
    sa.Column('upstream_key', sa.String(length=65), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('next_attempt_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('done_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sms_message_id'], ['sms_messages.id'], name=op.f('fk_sms_parts_sms_message_id_sms_messages'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['smpp_link_id'], ['smpp_links.id'], name=op.f('fk_sms_parts_smpp_link_id_smpp_links')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_parts'))
    )
    with op.batch_alter_table('sms_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_parts_sms_message_id'), ['sms_message_id'], unique=False)
        batch_op.create_index('ix_sms_parts_queue', ['node', 'smpp_link_id', 'state', 'id'], unique=False)
        batch_op.create_index('ix_sms_parts_upstream_key', ['upstream_key'], unique=False)

    op.create_table('sms_outbox',
    sa.Column('id', BigId, nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('sms_message_id', BigId, nullable=True),
    sa.Column('source', sa.String(length=65), nullable=False),
    sa.Column('destination', sa.String(length=65), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('data_coding', sa.Integer(), nullable=False),
    sa.Column('esm_class', sa.Integer(), nullable=False),
    sa.Column('tlvs', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=8), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('done_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['smpp_connections.id'],
                            name=op.f('fk_sms_outbox_connection_id_smpp_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sms_message_id'], ['sms_messages.id'],
                            name=op.f('fk_sms_outbox_sms_message_id_sms_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_outbox'))
    )
    with op.batch_alter_table('sms_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_sms_outbox_pending', ['connection_id', 'state', 'id'], unique=False)

    op.create_table('sms_sending_counts',
    sa.Column('id', BigId, nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('destination', sa.String(length=32), nullable=False),
    sa.Column('window_start', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['http_connections.id'],
                            name=op.f('fk_sms_sending_counts_connection_id_http_connections'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_sending_counts')),
    sa.UniqueConstraint('connection_id', 'destination', 'window_start', name='uq_sms_sending_counts_key')
    )
    with op.batch_alter_table('sms_sending_counts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sms_sending_counts_window_start'), ['window_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sms_sending_counts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_sending_counts_window_start'))
    op.drop_table('sms_sending_counts')
    with op.batch_alter_table('sms_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_outbox_pending')
    op.drop_table('sms_outbox')
    with op.batch_alter_table('sms_parts', schema=None) as batch_op:
        batch_op.drop_index('ix_sms_parts_upstream_key')
        batch_op.drop_index('ix_sms_parts_queue')
        batch_op.drop_index(batch_op.f('ix_sms_parts_sms_message_id'))
    op.drop_table('sms_parts')
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_sms_messages_message_id'), type_='unique')
        batch_op.drop_column('done_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('scheduled_at')
        batch_op.drop_column('price')
        batch_op.drop_column('node')
        batch_op.drop_column('client_reference')
        batch_op.drop_column('connection_id')
        batch_op.drop_column('origin_kind')
        batch_op.drop_column('message_id')
