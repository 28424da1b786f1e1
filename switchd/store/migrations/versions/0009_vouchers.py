"""Voucher lots and vouchers (PIN top-ups); IIF peers provisioned through the API.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22 12:00:00
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'voucher_lots',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('value', switchd.store.types.Money(), nullable=False),
        sa.Column('currency', sa.String(length=3), nullable=False),
        sa.Column('expires_at', switchd.store.types.UTCDateTime(), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_by_key_id', sa.Integer(), nullable=True),
        sa.Column('salt', sa.String(length=32), nullable=False),
        sa.Column('export_key_hash', sa.String(length=64), nullable=True),
        sa.Column('export_until', switchd.store.types.UTCDateTime(), nullable=True),
        sa.Column('exported_at', switchd.store.types.UTCDateTime(), nullable=True),
        sa.Column('created_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.Column('updated_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['created_by_key_id'], ['api_keys.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'vouchers',
        sa.Column('id', BigId, nullable=False),
        sa.Column('lot_id', sa.Integer(), nullable=False),
        sa.Column('serial', sa.Integer(), nullable=False),
        sa.Column('pin_prefix', sa.String(length=8), nullable=True),
        sa.Column('secret_hash', sa.String(length=64), nullable=False),
        sa.Column('sealed', sa.BigInteger(), nullable=True),
        sa.Column('used_at', switchd.store.types.UTCDateTime(), nullable=True),
        sa.Column('used_by_account_id', sa.Integer(), nullable=True),
        sa.Column('ledger_id', BigId, nullable=True),
        sa.ForeignKeyConstraint(['lot_id'], ['voucher_lots.id']),
        sa.ForeignKeyConstraint(['used_by_account_id'], ['accounts.id']),
        sa.ForeignKeyConstraint(['ledger_id'], ['ledger.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('lot_id', 'serial', name='uq_vouchers_lot_serial'),
    )
    with op.batch_alter_table('vouchers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vouchers_pin_prefix'), ['pin_prefix'], unique=False)
    op.create_table(
        'iif_peers',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=64), nullable=False),
        sa.Column('port', sa.Integer(), nullable=False),
        sa.Column('service_id', sa.Integer(), nullable=False),
        sa.Column('default_caller', sa.String(length=32), nullable=True),
        sa.Column('external_line_mode', sa.Boolean(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('created_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.Column('updated_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['service_id'], ['services.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('host', 'port', name='uq_iif_peers_host_port'),
    )
    with op.batch_alter_table('iif_peers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_iif_peers_service_id'), ['service_id'], unique=False)


def downgrade() -> None:
    op.drop_table('iif_peers')
    op.drop_table('vouchers')
    op.drop_table('voucher_lots')
