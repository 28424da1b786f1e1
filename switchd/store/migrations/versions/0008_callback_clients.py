"""Callback clients, their registered numbers and phone directories.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 01:50:00
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'callback_clients',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('service_id', sa.Integer(), nullable=False),
        sa.Column('login', sa.String(length=32), nullable=False),
        sa.Column('password_salt', sa.String(length=32), nullable=False),
        sa.Column('password_hash', sa.String(length=64), nullable=False),
        sa.Column('language', sa.String(length=2), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('created_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.Column('updated_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['service_id'], ['services.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('login'),
    )
    with op.batch_alter_table('callback_clients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_clients_service_id'), ['service_id'], unique=False)
    op.create_table(
        'callback_numbers',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.Integer(), nullable=False),
        sa.Column('number', sa.String(length=32), nullable=False),
        sa.Column('created_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.Column('updated_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['callback_clients.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('number'),
    )
    with op.batch_alter_table('callback_numbers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_callback_numbers_client_id'), ['client_id'], unique=False)
    op.create_table(
        'phone_directory',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('client_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('number', sa.String(length=32), nullable=False),
        sa.Column('created_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.Column('updated_at', switchd.store.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['client_id'], ['callback_clients.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('client_id', 'name', name='uq_phone_directory_name'),
        sa.UniqueConstraint('client_id', 'position', name='uq_phone_directory_position'),
    )
    with op.batch_alter_table('phone_directory', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_phone_directory_client_id'), ['client_id'], unique=False)


def downgrade() -> None:
    op.drop_table('phone_directory')
    op.drop_table('callback_numbers')
    op.drop_table('callback_clients')
