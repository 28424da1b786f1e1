"""SIP accounts (digest HA1s) and registrar bindings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 21:24:58.835096
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sip_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('realm', sa.String(length=128), nullable=False),
    sa.Column('ha1_md5', sa.String(length=32), nullable=False),
    sa.Column('ha1_sha256', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('caller_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_sip_accounts_service_id_services')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sip_accounts')),
    sa.UniqueConstraint('username', name=op.f('uq_sip_accounts_username'))
    )
    with op.batch_alter_table('sip_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sip_accounts_service_id'), ['service_id'], unique=False)

    op.create_table('registrations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sip_account_id', sa.Integer(), nullable=False),
    sa.Column('contact', sa.String(length=1000), nullable=False),
    sa.Column('expires_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('call_id', sa.String(length=255), nullable=False),
    sa.Column('cseq', sa.BigInteger(), nullable=False),
    sa.Column('source_transport', sa.String(length=8), nullable=False),
    sa.Column('source_host', sa.String(length=64), nullable=False),
    sa.Column('source_port', sa.Integer(), nullable=False),
    sa.Column('behind_nat', sa.Boolean(), nullable=False),
    sa.Column('user_agent', sa.String(length=255), nullable=True),
    sa.Column('node', sa.String(length=100), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sip_account_id'], ['sip_accounts.id'], name=op.f('fk_registrations_sip_account_id_sip_accounts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registrations')),
    sa.UniqueConstraint('sip_account_id', 'contact', name='uq_registrations_account_contact')
    )
    with op.batch_alter_table('registrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registrations_sip_account_id'), ['sip_account_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('registrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registrations_sip_account_id'))

    op.drop_table('registrations')
    with op.batch_alter_table('sip_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sip_accounts_service_id'))

    op.drop_table('sip_accounts')
