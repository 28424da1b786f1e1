"""The database schema: every table switchd keeps, in one place.

Provisioning follows seed 000 (customers, personal accounts, services and
their connections); carrier-side objects are tariff plans with rates, routing
groups, SIP trunks and upstream SMPP links; records are the balance ledger,
CDRs and SMS messages. Alembic migrations under ``migrations/`` create exactly
this schema; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from .types import BigId, Money, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

SERVICE_TYPES = (
    "sip_telephony",
    "api",
    "tts",
    "asr",
    "push_id",
    "incoming",
    "redirection",
    "callback",
)
FEE_PERIODS = ("none", "day", "week", "month", "year")
LEDGER_KINDS = ("topup", "refund", "credit", "charge", "writeoff", "debit")


def _created() -> Column:
    return Column("created_at", UTCDateTime(), nullable=False)


def _updated() -> Column:
    return Column("updated_at", UTCDateTime(), nullable=False)


customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("email", String(254), nullable=True),
    Column("phone", String(32), nullable=True),
    Column("company", String(200), nullable=True),
    Column("status", String(16), nullable=False, default="active"),
    Column("notes", Text, nullable=True),
    _created(),
    _updated(),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_id", Integer, ForeignKey("customers.id"), nullable=False, index=True),
    Column("name", String(200), nullable=True),
    Column("currency", String(3), nullable=False),
    Column("balance", Money(), nullable=False, default=0),
    Column("credit_limit", Money(), nullable=False, default=0),
    Column("billing_type", String(16), nullable=False, default="prepaid"),
    Column("status", String(16), nullable=False, default="active"),
    # Per-customer limits on calls (0: none), on top of each trunk's.
    Column("call_limit", Integer, nullable=False, default=0),
    Column("cps_limit", Integer, nullable=False, default=0),
    _created(),
    _updated(),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount", Money(), nullable=False),
    Column("balance_after", Money(), nullable=False),
    # What the movement is for: a CDR's call id, "service:7:2026-11", a PIN...
    # Unique per account and kind, so a charge can never be booked twice.
    Column("reference", String(200), nullable=True),
    Column("description", String(500), nullable=True),
    _created(),
    UniqueConstraint("account_id", "kind", "reference", name="uq_ledger_reference"),
    Index("ix_ledger_account_id_id", "account_id", "id"),
)

tariff_plans = Table(
    "tariff_plans",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("currency", String(3), nullable=False),
    Column("description", String(500), nullable=True),
    _created(),
    _updated(),
)

rates = Table(
    "rates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "tariff_plan_id",
        Integer,
        ForeignKey("tariff_plans.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Destination prefix, digits only; the empty prefix matches every number.
    Column("prefix", String(32), nullable=False),
    Column("description", String(200), nullable=True),
    Column("price_per_minute", Money(), nullable=False, default=0),
    Column("price_per_message", Money(), nullable=False, default=0),
    Column("price_per_use", Money(), nullable=False, default=0),
    Column("connection_fee", Money(), nullable=False, default=0),
    # Billing increments in seconds: "60/60" or "1/1" or "30/6".
    Column("increment_first", Integer, nullable=False, default=60),
    Column("increment_next", Integer, nullable=False, default=60),
    _created(),
    _updated(),
    UniqueConstraint("tariff_plan_id", "prefix", name="uq_rates_plan_prefix"),
)

routing_groups = Table(
    "routing_groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("description", String(500), nullable=True),
    _created(),
    _updated(),
)

trunks = Table(
    "trunks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("host", String(253), nullable=False),
    Column("port", Integer, nullable=False, default=5060),
    Column("transport", String(8), nullable=False, default="udp"),
    Column("enabled", Boolean, nullable=False, default=True),
    _created(),
    _updated(),
)

smpp_links = Table(
    "smpp_links",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("enabled", Boolean, nullable=False, default=True),
    # Basic configuration (seed 001, "Configuring SMS Gateways").
    Column("host", String(253), nullable=False),
    Column("port", Integer, nullable=False),
    Column("system_id", String(16), nullable=True),
    Column("password", String(9), nullable=True),
    Column("mode", String(16), nullable=False, default="transceiver"),
    Column("pdu_type", String(16), nullable=False, default="submit_sm"),
    Column("sender_id_prefixes", String(500), nullable=True),
    Column("accepted_number_prefixes", String(500), nullable=True),
    Column("default_sender_id", String(21), nullable=True),
    # ESME connection configuration.
    Column("client_port", Integer, nullable=False, default=0),
    Column("mo_port", Integer, nullable=False, default=0),
    Column("heartbeat_interval_ms", Integer, nullable=False, default=30000),
    Column("max_missed_heartbeats", Integer, nullable=False, default=3),
    Column("resend_times", Integer, nullable=False, default=0),
    Column("resend_wait_ms", Integer, nullable=False, default=0),
    Column("receiving_timeout_ms", Integer, nullable=False, default=180000),
    Column("max_error_packets", Integer, nullable=False, default=10),
    Column("window_size", Integer, nullable=False, default=16),
    Column("transaction_timeout_ms", Integer, nullable=False, default=6000),
    Column("max_message_length", Integer, nullable=False, default=2048),
    Column("split_mode", String(16), nullable=False, default="disabled"),
    Column("max_content_length", Integer, nullable=False, default=140),
    Column("max_receiving_rate", Integer, nullable=True),
    Column("max_sending_rate", Integer, nullable=True),
    Column("extra_traffic_policy", Integer, nullable=True),
    Column("concatenation_mode", String(8), nullable=False, default="udh"),
    # Message protocol parameters.
    Column("system_type", String(13), nullable=True),
    Column("addr_ton", Integer, nullable=False, default=0),
    Column("addr_npi", Integer, nullable=False, default=0),
    Column("address_range", String(41), nullable=True),
    Column("service_type", String(6), nullable=True),
    Column("source_addr_ton", Integer, nullable=False, default=0),
    Column("source_addr_npi", Integer, nullable=False, default=0),
    Column("dest_addr_ton", Integer, nullable=False, default=0),
    Column("dest_addr_npi", Integer, nullable=False, default=0),
    Column("esm_class", Integer, nullable=False, default=0),
    Column("message_format", String(8), nullable=False, default="ascii"),
    Column("protocol_id", Integer, nullable=False, default=0),
    Column("registered_delivery", Integer, nullable=False, default=2),
    Column("replace_if_present", Boolean, nullable=False, default=False),
    Column("default_msg_id", Integer, nullable=False, default=0),
    _created(),
    _updated(),
)

routing_group_members = Table(
    "routing_group_members",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "routing_group_id",
        Integer,
        ForeignKey("routing_groups.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # A member is a SIP trunk (calls) or an SMPP link (messages).
    Column("trunk_id", Integer, ForeignKey("trunks.id"), nullable=True),
    Column("smpp_link_id", Integer, ForeignKey("smpp_links.id"), nullable=True),
    # Distribution priority: higher is tried first; weight splits equals.
    Column("priority", Integer, nullable=False, default=0),
    Column("weight", Integer, nullable=False, default=100),
    # Digits prefixes this member carries ("" or NULL: every destination).
    Column("prefixes", String(500), nullable=True),
    _created(),
    _updated(),
    CheckConstraint(
        "(trunk_id IS NULL) <> (smpp_link_id IS NULL)", name="one_target"
    ),
)

services = Table(
    "services",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False, index=True),
    Column("type", String(16), nullable=False),
    Column("name", String(200), nullable=True),
    Column("tariff_plan_id", Integer, ForeignKey("tariff_plans.id"), nullable=False),
    Column("routing_group_id", Integer, ForeignKey("routing_groups.id"), nullable=True),
    Column("distribution_priority", Integer, nullable=False, default=0),
    Column("periodic_fee", Money(), nullable=False, default=0),
    Column("fee_period", String(8), nullable=False, default="none"),
    Column("status", String(16), nullable=False, default="active"),
    _created(),
    _updated(),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    # NULL customer: an admin key. Otherwise the key acts for that customer.
    Column("customer_id", Integer, ForeignKey("customers.id"), nullable=True, index=True),
    Column("name", String(200), nullable=True),
    Column("admin", Boolean, nullable=False, default=False),
    # The public part of the key (its lookup id) and a salted hash of the rest.
    Column("prefix", String(16), nullable=False, unique=True),
    Column("salt", String(32), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    _created(),
)

sip_connections = Table(
    "sip_connections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("trunk_id", Integer, ForeignKey("trunks.id"), nullable=False),
    Column("auth_type", String(16), nullable=False, default="registration"),
    Column("auth_user", String(100), nullable=True),
    Column("auth_password", String(100), nullable=True),
    Column("outbound_src_hardware", String(500), nullable=True),
    Column("cps_limit", Integer, nullable=False, default=0),
    Column("call_limit", Integer, nullable=False, default=0),
    Column("voice_record", Boolean, nullable=False, default=False),
    Column("area_id", Integer, nullable=False, default=1),
    Column("interface_name", String(64), nullable=False, default="mitto"),
    Column("comedia", Boolean, nullable=False, default=False),
    Column("force_rport", Boolean, nullable=False, default=False),
    Column("filter_caching", Boolean, nullable=False, default=False),
    Column("logging", Boolean, nullable=False, default=False),
    Column("qualify_ms", Integer, nullable=False, default=0),
    # Number rules for calls sent to the trunk: drop leading digits, then add
    # a prefix, then optionally present the number in E.164 with '+'.
    Column("strip_digits", Integer, nullable=False, default=0),
    Column("add_prefix", String(16), nullable=False, default=""),
    Column("e164", Boolean, nullable=False, default=False),
    # Leave the media to the endpoints (no relay) when the caller is reachable.
    Column("media_bypass", Boolean, nullable=False, default=False),
    _created(),
    _updated(),
)

smpp_connections = Table(
    "smpp_connections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("login", String(16), nullable=False, unique=True),
    Column("password_salt", String(32), nullable=False),
    Column("password_hash", String(64), nullable=False),
    Column("system_type", String(13), nullable=False, default="0"),
    Column("reception_speed", Integer, nullable=False, default=50),
    _created(),
    _updated(),
)

http_connections = Table(
    "http_connections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("api_key_id", Integer, ForeignKey("api_keys.id"), nullable=False, unique=True),
    Column("callback_version", String(2), nullable=False, default="V1"),
    Column("start_callback", Boolean, nullable=False, default=False),
    Column("end_callback", Boolean, nullable=False, default=False),
    Column("transfer_method", String(8), nullable=False, default="POST"),
    Column("url", String(2000), nullable=True),
    Column("username", String(200), nullable=True),
    Column("password", String(200), nullable=True),
    Column("callback_repeat", Boolean, nullable=False, default=False),
    Column("pass_a_number", Boolean, nullable=False, default=False),
    Column("status_survey", Boolean, nullable=False, default=False),
    Column("sending_restriction", Boolean, nullable=False, default=False),
    Column("number_of_sendings", Integer, nullable=False, default=0),
    Column("headers", JSON, nullable=False, default=dict),
    _created(),
    _updated(),
)

imap_connections = Table(
    "imap_connections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("server", String(253), nullable=False),
    Column("port", Integer, nullable=False, default=993),
    Column("username", String(200), nullable=False),
    Column("password", String(200), nullable=False),
    Column("protection", String(8), nullable=False, default="ssl"),
    Column("folder", String(200), nullable=False, default="INBOX"),
    _created(),
    _updated(),
)

cdrs = Table(
    "cdrs",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("call_id", String(200), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=True),
    Column("trunk_id", Integer, ForeignKey("trunks.id"), nullable=True),
    Column("direction", String(8), nullable=False, default="outbound"),
    Column("caller", String(64), nullable=True),
    Column("callee", String(64), nullable=True),
    Column("start_time", UTCDateTime(), nullable=False),
    Column("answer_time", UTCDateTime(), nullable=True),
    Column("end_time", UTCDateTime(), nullable=False),
    Column("ring_seconds", Integer, nullable=False, default=0),
    Column("billable_seconds", Integer, nullable=False, default=0),
    Column("hangup_side", String(8), nullable=True),
    Column("sip_code", Integer, nullable=True),
    Column("reason", String(200), nullable=True),
    Column("rate", Money(), nullable=True),
    Column("charge", Money(), nullable=False, default=0),
    Column("currency", String(3), nullable=True),
    Column("recording", String(500), nullable=True),
    Column("node", String(100), nullable=True),
    _created(),
    Index("ix_cdrs_account_id_start_time", "account_id", "start_time"),
)

#: The messages of ``ix_sms_messages_callbacks_waiting``.
_CALLBACKS_WAITING = "origin_kind = 'http' AND callbacks_sent < 2"

sms_messages = Table(
    "sms_messages",
    metadata,
    Column("id", BigId, primary_key=True),
    # Our message id, as given to the customer (submit_sm_resp, HTTP answer).
    Column("message_id", String(64), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=True),
    Column("direction", String(4), nullable=False, default="mt"),
    # Who submitted (mt: "smpp" or "http") or received (mo: "smpp" or "http")
    # it, and through which smpp_connections / http_connections row.
    Column("origin_kind", String(8), nullable=False, default="smpp"),
    Column("connection_id", Integer, nullable=True),
    Column("client_reference", String(200), nullable=True),
    # The node whose queue sends it upstream.
    Column("node", String(100), nullable=True),
    Column("source", String(21), nullable=False),
    Column("destination", String(21), nullable=False),
    Column("body", Text, nullable=False, default=""),
    Column("data_coding", Integer, nullable=False, default=0),
    Column("esm_class", Integer, nullable=False, default=0),
    Column("registered_delivery", Integer, nullable=False, default=0),
    Column("parts", Integer, nullable=False, default=1),
    # ENROUTE until every part is final, then DELIVERED, UNDELIVERABLE...
    Column("status", String(16), nullable=False, default="ENROUTE"),
    Column("smpp_link_id", Integer, ForeignKey("smpp_links.id"), nullable=True),
    Column("upstream_message_id", String(65), nullable=True, index=True),
    Column("error_code", Integer, nullable=True),
    Column("price", Money(), nullable=False, default=0),  # per part
    Column("charge", Money(), nullable=False, default=0),
    Column("scheduled_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("done_at", UTCDateTime(), nullable=True),
    _created(),
    _updated(),
    # The status callbacks (HTTP origin) done, delivered or given up: 1 start,
    # 2 end, 4 mo. A restart sends those due and not done.
    Column("callbacks_sent", Integer, nullable=False, default=0, server_default=text("0")),
    Index("ix_sms_messages_account_id_id", "account_id", "id"),
    # The messages whose end or MO callback is not done yet: what a restart looks at.
    Index("ix_sms_messages_callbacks_waiting", "node", "id",
          postgresql_where=text(_CALLBACKS_WAITING), sqlite_where=text(_CALLBACKS_WAITING)),
)

sms_parts = Table(
    "sms_parts",
    metadata,
    # The upstream queue: one row per PDU to send, as split for its link.
    # A part is "queued" until the SMSC acknowledged it ("sent", with its
    # upstream id), then takes the final state of its receipt.
    Column("id", BigId, primary_key=True),
    Column(
        "sms_message_id",
        BigId,
        ForeignKey("sms_messages.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("number", Integer, nullable=False, default=1),
    Column("total", Integer, nullable=False, default=1),
    Column("node", String(100), nullable=False),
    Column("smpp_link_id", Integer, ForeignKey("smpp_links.id"), nullable=True),
    Column("state", String(16), nullable=False, default="queued"),
    Column("short_message", LargeBinary, nullable=False),
    # True: the content goes in the message_payload TLV (long not_split
    # messages, data_sm links).
    Column("in_payload", Boolean, nullable=False, default=False),
    Column("data_coding", Integer, nullable=False, default=0),
    Column("esm_class", Integer, nullable=False, default=0),
    Column("registered_delivery", Integer, nullable=False, default=0),
    Column("tlvs", JSON, nullable=False, default=dict),
    Column("upstream_message_id", String(65), nullable=True),
    # normalize_message_id(upstream_message_id): what receipts are matched on.
    Column("upstream_key", String(65), nullable=True),
    Column("error_code", Integer, nullable=True),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("done_at", UTCDateTime(), nullable=True),
    _created(),
    _updated(),
    Index("ix_sms_parts_queue", "node", "smpp_link_id", "state", "id"),
    Index("ix_sms_parts_upstream_key", "upstream_key"),
)

sms_outbox = Table(
    "sms_outbox",
    metadata,
    # Receipts and MO messages waiting for a customer's ESME (deliver_sm),
    # kept until it answers deliver_sm_resp OK.
    Column("id", BigId, primary_key=True),
    Column(
        "connection_id",
        Integer,
        ForeignKey("smpp_connections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(8), nullable=False),  # receipt or mo
    Column("sms_message_id", BigId, ForeignKey("sms_messages.id", ondelete="CASCADE"), nullable=True),
    Column("source", String(65), nullable=False),
    Column("destination", String(65), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("data_coding", Integer, nullable=False, default=0),
    Column("esm_class", Integer, nullable=False, default=0),
    Column("tlvs", JSON, nullable=False, default=dict),
    Column("state", String(8), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("done_at", UTCDateTime(), nullable=True),
    _created(),
    Index("ix_sms_outbox_pending", "connection_id", "state", "id"),
)

sms_sending_counts = Table(
    "sms_sending_counts",
    metadata,
    # Anti-fraud "sending restriction": messages an HTTP connection sent to
    # one destination number in one window.
    Column("id", BigId, primary_key=True),
    Column(
        "connection_id",
        Integer,
        ForeignKey("http_connections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("destination", String(32), nullable=False),
    Column("window_start", UTCDateTime(), nullable=False, index=True),
    Column("count", Integer, nullable=False, default=0),
    UniqueConstraint("connection_id", "destination", "window_start", name="uq_sms_sending_counts_key"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("api_key_id", Integer, ForeignKey("api_keys.id"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(500), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", Text, nullable=False),
    _created(),
    UniqueConstraint("api_key_id", "key", name="uq_idempotency_keys_api_key_key"),
)

sip_accounts = Table(
    "sip_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("username", String(64), nullable=False, unique=True),
    # Digest is checked against H(username:realm:password) per algorithm
    # (RFC 8760); the password itself is never stored.
    Column("realm", String(128), nullable=False),
    Column("ha1_md5", String(32), nullable=False),
    Column("ha1_sha256", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("caller_id", String(32), nullable=True),
    _created(),
    _updated(),
)

registrations = Table(
    "registrations",
    metadata,
    Column("id", BigId, primary_key=True),
    Column(
        "sip_account_id",
        Integer,
        ForeignKey("sip_accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("contact", String(1000), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("call_id", String(255), nullable=False),
    Column("cseq", BigInteger, nullable=False),
    # Where the REGISTER came from: behind NAT this differs from the Contact,
    # and requests for the contact are sent here.
    Column("source_transport", String(8), nullable=False),
    Column("source_host", String(64), nullable=False),
    Column("source_port", Integer, nullable=False),
    Column("behind_nat", Boolean, nullable=False, default=False),
    Column("user_agent", String(255), nullable=True),
    Column("node", String(100), nullable=True),
    _created(),
    _updated(),
    UniqueConstraint("sip_account_id", "contact", name="uq_registrations_account_contact"),
)

active_calls = Table(
    "active_calls",
    metadata,
    # Written when a call is answered and removed with its CDR: what is left
    # after a crash is turned into CDRs at the next start.
    Column("call_id", String(200), primary_key=True),
    Column("node", String(100), nullable=False, index=True),
    Column("account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=True),
    Column("trunk_id", Integer, ForeignKey("trunks.id"), nullable=True),
    Column("direction", String(8), nullable=False, default="outbound"),
    Column("caller", String(64), nullable=True),
    Column("callee", String(64), nullable=True),
    Column("start_time", UTCDateTime(), nullable=False),
    Column("answer_time", UTCDateTime(), nullable=False),
    Column("rate", Money(), nullable=True),
    Column("connection_fee", Money(), nullable=False, default=0),
    Column("increment_first", Integer, nullable=False, default=60),
    Column("increment_next", Integer, nullable=False, default=60),
    Column("currency", String(3), nullable=True),
    _created(),
)

nodes = Table(
    "nodes",
    metadata,
    # Each node's heartbeat: after a crash, its calls are taken to have ended
    # at the last heartbeat, not at the restart.
    Column("name", String(100), primary_key=True),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
)

numbers = Table(
    "numbers",
    metadata,
    # The switch's own numbers (DIDs): calls to them are delivered to the
    # customer's registered devices (INCOMING) or sent on (REDIRECTION).
    Column("id", Integer, primary_key=True),
    Column("number", String(32), nullable=False, unique=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("sip_account_id", Integer, ForeignKey("sip_accounts.id"), nullable=True),
    Column("redirect_always", String(32), nullable=True),
    Column("redirect_busy", String(32), nullable=True),
    Column("redirect_no_answer", String(32), nullable=True),
    Column("redirect_unregistered", String(32), nullable=True),
    Column("no_answer_seconds", Integer, nullable=False, default=20),
    # Callback access numbers: the IVR's language for callers of this number
    # whose client has none of its own (null: English).
    Column("language", String(2), nullable=True),
    _created(),
    _updated(),
)


# -- callback clients (seed 002) ------------------------------------------------------

callback_clients = Table(
    "callback_clients",
    metadata,
    # A callback user: authorised by a registered number or by login and
    # password in an SMS; its service pays for the calls and routes them.
    Column("id", Integer, primary_key=True),
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("login", String(32), nullable=False, unique=True),
    Column("password_salt", String(32), nullable=False),
    Column("password_hash", String(64), nullable=False),
    # Null: the language of the access number called or texted, else English.
    Column("language", String(2), nullable=True),
    Column("status", String(16), nullable=False, default="active"),
    _created(),
    _updated(),
)

callback_numbers = Table(
    "callback_numbers",
    metadata,
    # Phone numbers that identify a callback client (SMS sender, ANI caller).
    Column("id", Integer, primary_key=True),
    Column("client_id", Integer, ForeignKey("callback_clients.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("number", String(32), nullable=False, unique=True),
    _created(),
    _updated(),
)

phone_directory = Table(
    "phone_directory",
    metadata,
    # A client's directory: B.<name> and N<position> call these numbers.
    Column("id", Integer, primary_key=True),
    Column("client_id", Integer, ForeignKey("callback_clients.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("name", String(64), nullable=False),
    Column("number", String(32), nullable=False),
    _created(),
    _updated(),
    UniqueConstraint("client_id", "position", name="uq_phone_directory_position"),
    UniqueConstraint("client_id", "name", name="uq_phone_directory_name"),
)


# -- vouchers (PIN top-ups) and IIF peers -----------------------------------------------

VOUCHER_KINDS = ("pin", "login")

voucher_lots = Table(
    "voucher_lots",
    metadata,
    # A batch of prepaid vouchers of one value. The secrets themselves are
    # never stored: each voucher keeps a salted hash, and, until the one
    # export, its secret sealed under a key that only the creator was given.
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(8), nullable=False, default="pin"),  # pin, or login/password pairs
    Column("count", Integer, nullable=False),
    Column("value", Money(), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("status", String(16), nullable=False, default="active"),
    Column("created_by_key_id", Integer, ForeignKey("api_keys.id"), nullable=True),
    Column("salt", String(32), nullable=False),
    # sha256 of the export key (256 random bits: no salt needed); the secrets
    # can be exported once, until export_until.
    Column("export_key_hash", String(64), nullable=True),
    Column("export_until", UTCDateTime(), nullable=True),
    Column("exported_at", UTCDateTime(), nullable=True),
    _created(),
    _updated(),
)

vouchers = Table(
    "vouchers",
    metadata,
    Column("id", BigId, primary_key=True),
    Column("lot_id", Integer, ForeignKey("voucher_lots.id"), nullable=False),
    # 1..count within the lot; a login voucher's login is the lot id and this.
    Column("serial", Integer, nullable=False),
    # First digits of a PIN: not secret, finds the candidates for a PIN.
    Column("pin_prefix", String(8), nullable=True, index=True),
    Column("secret_hash", String(64), nullable=False),
    # The PIN or password sealed under the lot's export key; NULL once exported.
    Column("sealed", BigInteger, nullable=True),
    Column("used_at", UTCDateTime(), nullable=True),
    Column("used_by_account_id", Integer, ForeignKey("accounts.id"), nullable=True),
    Column("ledger_id", BigId, ForeignKey("ledger.id"), nullable=True),
    UniqueConstraint("lot_id", "serial", name="uq_vouchers_lot_serial"),
)

iif_peers = Table(
    "iif_peers",
    metadata,
    # IIF application servers provisioned through the API (on top of [iif] peers).
    Column("id", Integer, primary_key=True),
    Column("host", String(64), nullable=False),
    Column("port", Integer, nullable=False, default=0),  # 0: any source port of the host
    Column("service_id", Integer, ForeignKey("services.id"), nullable=False, index=True),
    Column("default_caller", String(32), nullable=True),
    Column("external_line_mode", Boolean, nullable=False, default=False),
    Column("enabled", Boolean, nullable=False, default=True),
    _created(),
    _updated(),
    UniqueConstraint("host", "port", name="uq_iif_peers_host_port"),
)
