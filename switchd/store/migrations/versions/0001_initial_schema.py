"""Initial schema: provisioning, carrier objects, ledger, CDRs and messages.

Revision ID: 0001
Revises: 
Create Date: 2026-11-21 21:07:47.809514
"""

import sqlalchemy as sa
from alembic import op

import switchd.store.types

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('customers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('company', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_customers'))
    )
    op.create_table('routing_groups',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_routing_groups')),
    sa.UniqueConstraint('name', name=op.f('uq_routing_groups_name'))
    )
    op.create_table('smpp_links',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('host', sa.String(length=253), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('system_id', sa.String(length=16), nullable=True),
    sa.Column('password', sa.String(length=9), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('pdu_type', sa.String(length=16), nullable=False),
    sa.Column('sender_id_prefixes', sa.String(length=500), nullable=True),
    sa.Column('accepted_number_prefixes', sa.String(length=500), nullable=True),
    sa.Column('default_sender_id', sa.String(length=21), nullable=True),
    sa.Column('client_port', sa.Integer(), nullable=False),
    sa.Column('mo_port', sa.Integer(), nullable=False),
    sa.Column('heartbeat_interval_ms', sa.Integer(), nullable=False),
    sa.Column('max_missed_heartbeats', sa.Integer(), nullable=False),
    sa.Column('resend_times', sa.Integer(), nullable=False),
    sa.Column('resend_wait_ms', sa.Integer(), nullable=False),
    sa.Column('receiving_timeout_ms', sa.Integer(), nullable=False),
    sa.Column('max_error_packets', sa.Integer(), nullable=False),
    sa.Column('window_size', sa.Integer(), nullable=False),
    sa.Column('transaction_timeout_ms', sa.Integer(), nullable=False),
    sa.Column('max_message_length', sa.Integer(), nullable=False),
    sa.Column('split_mode', sa.String(length=16), nullable=False),
    sa.Column('max_content_length', sa.Integer(), nullable=False),
    sa.Column('max_receiving_rate', sa.Integer(), nullable=True),
    sa.Column('max_sending_rate', sa.Integer(), nullable=True),
    sa.Column('extra_traffic_policy', sa.Integer(), nullable=True),
    sa.Column('concatenation_mode', sa.String(length=8), nullable=False),
    sa.Column('system_type', sa.String(length=13), nullable=True),
    sa.Column('addr_ton', sa.Integer(), nullable=False),
    sa.Column('addr_npi', sa.Integer(), nullable=False),
    sa.Column('address_range', sa.String(length=41), nullable=True),
    sa.Column('service_type', sa.String(length=6), nullable=True),
    sa.Column('source_addr_ton', sa.Integer(), nullable=False),
    sa.Column('source_addr_npi', sa.Integer(), nullable=False),
    sa.Column('dest_addr_ton', sa.Integer(), nullable=False),
    sa.Column('dest_addr_npi', sa.Integer(), nullable=False),
    sa.Column('esm_class', sa.Integer(), nullable=False),
    sa.Column('message_format', sa.String(length=8), nullable=False),
    sa.Column('protocol_id', sa.Integer(), nullable=False),
    sa.Column('registered_delivery', sa.Integer(), nullable=False),
    sa.Column('replace_if_present', sa.Boolean(), nullable=False),
    sa.Column('default_msg_id', sa.Integer(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_smpp_links')),
    sa.UniqueConstraint('name', name=op.f('uq_smpp_links_name'))
    )
    op.create_table('tariff_plans',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tariff_plans')),
    sa.UniqueConstraint('name', name=op.f('uq_tariff_plans_name'))
    )
    op.create_table('trunks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('host', sa.String(length=253), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=8), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trunks')),
    sa.UniqueConstraint('name', name=op.f('uq_trunks_name'))
    )
    op.create_table('accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('balance', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('credit_limit', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('billing_type', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_accounts_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts'))
    )
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_customer_id'), ['customer_id'], unique=False)

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('revoked_at', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_api_keys_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('prefix', name=op.f('uq_api_keys_prefix'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_customer_id'), ['customer_id'], unique=False)

    op.create_table('rates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tariff_plan_id', sa.Integer(), nullable=False),
    sa.Column('prefix', sa.String(length=32), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('price_per_minute', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('price_per_message', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('price_per_use', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('connection_fee', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('increment_first', sa.Integer(), nullable=False),
    sa.Column('increment_next', sa.Integer(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tariff_plan_id'], ['tariff_plans.id'], name=op.f('fk_rates_tariff_plan_id_tariff_plans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rates')),
    sa.UniqueConstraint('tariff_plan_id', 'prefix', name='uq_rates_plan_prefix')
    )
    op.create_table('routing_group_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('routing_group_id', sa.Integer(), nullable=False),
    sa.Column('trunk_id', sa.Integer(), nullable=True),
    sa.Column('smpp_link_id', sa.Integer(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('weight', sa.Integer(), nullable=False),
    sa.Column('prefixes', sa.String(length=500), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(trunk_id IS NULL) <> (smpp_link_id IS NULL)', name=op.f('ck_routing_group_members_one_target')),
    sa.ForeignKeyConstraint(['routing_group_id'], ['routing_groups.id'], name=op.f('fk_routing_group_members_routing_group_id_routing_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['smpp_link_id'], ['smpp_links.id'], name=op.f('fk_routing_group_members_smpp_link_id_smpp_links')),
    sa.ForeignKeyConstraint(['trunk_id'], ['trunks.id'], name=op.f('fk_routing_group_members_trunk_id_trunks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_routing_group_members'))
    )
    with op.batch_alter_table('routing_group_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_routing_group_members_routing_group_id'), ['routing_group_id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_idempotency_keys_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('api_key_id', 'key', name='uq_idempotency_keys_api_key_key')
    )
    op.create_table('ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('amount', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('balance_after', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('description', sa.String(length=500), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_ledger_account_id_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger')),
    sa.UniqueConstraint('account_id', 'kind', 'reference', name='uq_ledger_reference')
    )
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_account_id_id', ['account_id', 'id'], unique=False)

    op.create_table('services',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('tariff_plan_id', sa.Integer(), nullable=False),
    sa.Column('routing_group_id', sa.Integer(), nullable=True),
    sa.Column('distribution_priority', sa.Integer(), nullable=False),
    sa.Column('periodic_fee', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('fee_period', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_services_account_id_accounts')),
    sa.ForeignKeyConstraint(['routing_group_id'], ['routing_groups.id'], name=op.f('fk_services_routing_group_id_routing_groups')),
    sa.ForeignKeyConstraint(['tariff_plan_id'], ['tariff_plans.id'], name=op.f('fk_services_tariff_plan_id_tariff_plans')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_services'))
    )
    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_services_account_id'), ['account_id'], unique=False)

    op.create_table('cdrs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('call_id', sa.String(length=200), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=True),
    sa.Column('trunk_id', sa.Integer(), nullable=True),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('caller', sa.String(length=64), nullable=True),
    sa.Column('callee', sa.String(length=64), nullable=True),
    sa.Column('start_time', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('answer_time', switchd.store.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_time', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('ring_seconds', sa.Integer(), nullable=False),
    sa.Column('billable_seconds', sa.Integer(), nullable=False),
    sa.Column('hangup_side', sa.String(length=8), nullable=True),
    sa.Column('sip_code', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=200), nullable=True),
    sa.Column('rate', switchd.store.types.Money(precision=20, scale=6), nullable=True),
    sa.Column('charge', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('recording', sa.String(length=500), nullable=True),
    sa.Column('node', sa.String(length=100), nullable=True),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_cdrs_account_id_accounts')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_cdrs_service_id_services')),
    sa.ForeignKeyConstraint(['trunk_id'], ['trunks.id'], name=op.f('fk_cdrs_trunk_id_trunks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cdrs')),
    sa.UniqueConstraint('call_id', name=op.f('uq_cdrs_call_id'))
    )
    with op.batch_alter_table('cdrs', schema=None) as batch_op:
        batch_op.create_index('ix_cdrs_account_id_start_time', ['account_id', 'start_time'], unique=False)

    op.create_table('http_connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('callback_version', sa.String(length=2), nullable=False),
    sa.Column('start_callback', sa.Boolean(), nullable=False),
    sa.Column('end_callback', sa.Boolean(), nullable=False),
    sa.Column('transfer_method', sa.String(length=8), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=True),
    sa.Column('username', sa.String(length=200), nullable=True),
    sa.Column('password', sa.String(length=200), nullable=True),
    sa.Column('callback_repeat', sa.Boolean(), nullable=False),
    sa.Column('pass_a_number', sa.Boolean(), nullable=False),
    sa.Column('status_survey', sa.Boolean(), nullable=False),
    sa.Column('sending_restriction', sa.Boolean(), nullable=False),
    sa.Column('number_of_sendings', sa.Integer(), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_http_connections_api_key_id_api_keys')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_http_connections_service_id_services')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_http_connections')),
    sa.UniqueConstraint('api_key_id', name=op.f('uq_http_connections_api_key_id'))
    )
    with op.batch_alter_table('http_connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_http_connections_service_id'), ['service_id'], unique=False)

    op.create_table('imap_connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('server', sa.String(length=253), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=200), nullable=False),
    sa.Column('password', sa.String(length=200), nullable=False),
    sa.Column('protection', sa.String(length=8), nullable=False),
    sa.Column('folder', sa.String(length=200), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_imap_connections_service_id_services')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_imap_connections'))
    )
    with op.batch_alter_table('imap_connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imap_connections_service_id'), ['service_id'], unique=False)

    op.create_table('sip_connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('trunk_id', sa.Integer(), nullable=False),
    sa.Column('auth_type', sa.String(length=16), nullable=False),
    sa.Column('auth_user', sa.String(length=100), nullable=True),
    sa.Column('auth_password', sa.String(length=100), nullable=True),
    sa.Column('outbound_src_hardware', sa.String(length=500), nullable=True),
    sa.Column('cps_limit', sa.Integer(), nullable=False),
    sa.Column('call_limit', sa.Integer(), nullable=False),
    sa.Column('voice_record', sa.Boolean(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('interface_name', sa.String(length=64), nullable=False),
    sa.Column('comedia', sa.Boolean(), nullable=False),
    sa.Column('force_rport', sa.Boolean(), nullable=False),
    sa.Column('filter_caching', sa.Boolean(), nullable=False),
    sa.Column('logging', sa.Boolean(), nullable=False),
    sa.Column('qualify_ms', sa.Integer(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_sip_connections_service_id_services')),
    sa.ForeignKeyConstraint(['trunk_id'], ['trunks.id'], name=op.f('fk_sip_connections_trunk_id_trunks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sip_connections'))
    )
    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sip_connections_service_id'), ['service_id'], unique=False)

    op.create_table('smpp_connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('service_id', sa.Integer(), nullable=False),
    sa.Column('login', sa.String(length=16), nullable=False),
    sa.Column('password_salt', sa.String(length=32), nullable=False),
    sa.Column('password_hash', sa.String(length=64), nullable=False),
    sa.Column('system_type', sa.String(length=13), nullable=False),
    sa.Column('reception_speed', sa.Integer(), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_smpp_connections_service_id_services')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_smpp_connections')),
    sa.UniqueConstraint('login', name=op.f('uq_smpp_connections_login'))
    )
    with op.batch_alter_table('smpp_connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_smpp_connections_service_id'), ['service_id'], unique=False)

    op.create_table('sms_messages',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=True),
    sa.Column('service_id', sa.Integer(), nullable=True),
    sa.Column('direction', sa.String(length=4), nullable=False),
    sa.Column('source', sa.String(length=21), nullable=False),
    sa.Column('destination', sa.String(length=21), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('data_coding', sa.Integer(), nullable=False),
    sa.Column('esm_class', sa.Integer(), nullable=False),
    sa.Column('registered_delivery', sa.Integer(), nullable=False),
    sa.Column('parts', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('smpp_link_id', sa.Integer(), nullable=True),
    sa.Column('upstream_message_id', sa.String(length=65), nullable=True),
    sa.Column('error_code', sa.Integer(), nullable=True),
    sa.Column('charge', switchd.store.types.Money(precision=20, scale=6), nullable=False),
    sa.Column('created_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', switchd.store.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_sms_messages_account_id_accounts')),
    sa.ForeignKeyConstraint(['service_id'], ['services.id'], name=op.f('fk_sms_messages_service_id_services')),
    sa.ForeignKeyConstraint(['smpp_link_id'], ['smpp_links.id'], name=op.f('fk_sms_messages_smpp_link_id_smpp_links')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sms_messages'))
    )
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.create_index('ix_sms_messages_account_id_id', ['account_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sms_messages_upstream_message_id'), ['upstream_message_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sms_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sms_messages_upstream_message_id'))
        batch_op.drop_index('ix_sms_messages_account_id_id')

    op.drop_table('sms_messages')
    with op.batch_alter_table('smpp_connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_smpp_connections_service_id'))

    op.drop_table('smpp_connections')
    with op.batch_alter_table('sip_connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sip_connections_service_id'))

    op.drop_table('sip_connections')
    with op.batch_alter_table('imap_connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_imap_connections_service_id'))

    op.drop_table('imap_connections')
    with op.batch_alter_table('http_connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_http_connections_service_id'))

    op.drop_table('http_connections')
    with op.batch_alter_table('cdrs', schema=None) as batch_op:
        batch_op.drop_index('ix_cdrs_account_id_start_time')

    op.drop_table('cdrs')
    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_services_account_id'))

    op.drop_table('services')
    with op.batch_alter_table('ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_account_id_id')

    op.drop_table('ledger')
    op.drop_table('idempotency_keys')
    with op.batch_alter_table('routing_group_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_routing_group_members_routing_group_id'))

    op.drop_table('routing_group_members')
    op.drop_table('rates')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_customer_id'))

    op.drop_table('api_keys')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_customer_id'))

    op.drop_table('accounts')
    op.drop_table('trunks')
    op.drop_table('tariff_plans')
    op.drop_table('smpp_links')
    op.drop_table('routing_groups')
    op.drop_table('customers')
