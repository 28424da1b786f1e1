"""Every collection of the provisioning API, described once (see schema.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..store import models as m
from ..sip.digest import compute_ha1
from .auth import Principal, create_key, new_secret_hash
from .problem import Problem
from .schema import Field, Resource, WriteContext

# -- field shorthands ---------------------------------------------------------


def _id() -> Field:
    return Field("id", "id", "Identifier assigned by switchd.", readonly=True)


def _created() -> Field:
    return Field("created_at", "datetime", "When the object was created (UTC).", readonly=True)


def _updated() -> Field:
    return Field("updated_at", "datetime", "When the object last changed (UTC).", readonly=True)


def text(name: str, max_length: int, doc: str, **kw: Any) -> Field:
    return Field(name, "string", doc, max_length=max_length, **kw)


def opt_text(name: str, max_length: int, doc: str, **kw: Any) -> Field:
    return Field(name, "string", doc, max_length=max_length, nullable=True, **kw)


def integer(name: str, doc: str, default: int | None = None, **kw: Any) -> Field:
    return Field(name, "integer", doc, default=default, **kw)


def flag(name: str, doc: str, default: bool = False, **kw: Any) -> Field:
    return Field(name, "boolean", doc, default=default, **kw)


def choice(name: str, values: tuple[str, ...], doc: str, default: str | None = None, **kw: Any) -> Field:
    return Field(name, "string", doc, enum=values, default=default, **kw)


def money(name: str, doc: str, default: str | None = "0", **kw: Any) -> Field:
    return Field(name, "money", doc, default=default, **kw)


def ref(name: str, target: str, doc: str, **kw: Any) -> Field:
    return Field(name, "id", doc, ref=target, **kw)


# Host names and IPv4 addresses; an IPv6 peer is reached through its name.
URL_PATTERN = r"^https?://[A-Za-z0-9._~%!$&'()*+,;=-]+(:[0-9]{1,5})?([/?#][^\s\u0000-\u001f\u007f-\u009f]*)?$"
POSITIVE_MONEY = r"^(?=[0-9.]*[1-9])[0-9]{1,12}(\.[0-9]{1,6})?$"
CURRENCY = dict(pattern="^[A-Z]{3}$", min_length=3)
HOST = dict(pattern=r"^[A-Za-z0-9.:\[\]_-]{1,253}$")
#: Languages of the callback IVR's prompts.
LANGUAGES = ("en", "es", "fr", "vi", "zh")
PREFIXES = dict(pattern=r"^[0-9A-Za-z]*(;[0-9A-Za-z]+)*$")


# -- ownership: the SQL that limits rows to one customer -------------------------


def _accounts_of(customer_id: int):
    return select(m.accounts.c.id).where(m.accounts.c.customer_id == customer_id)


def _services_of(customer_id: int):
    return select(m.services.c.id).where(m.services.c.account_id.in_(_accounts_of(customer_id)))


def _by_service(table):
    return lambda cid: table.c.service_id.in_(_services_of(cid))


# -- hooks -------------------------------------------------------------------


def _customer_of_service(conn: Connection, service_id: int) -> int:
    return conn.execute(
        select(m.accounts.c.customer_id)
        .select_from(m.services.join(m.accounts))
        .where(m.services.c.id == service_id)
    ).scalar_one()


def _api_key_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    principal, now = ctx.principal, ctx.now
    if not principal.admin:
        values["customer_id"] = principal.customer_id
    customer_id = values.get("customer_id")
    key_id, key = create_key(
        conn,
        now,
        admin=customer_id is None,
        customer_id=customer_id,
        name=values.get("name"),
    )
    values.clear()
    values["id"] = key_id
    return {"key": key}


def _api_key_delete(conn: Connection, key_id: int, principal: Principal) -> None:
    if key_id == principal.key_id:
        raise Problem(409, "a key cannot revoke itself; revoke it with another key")
    admins = conn.execute(
        select(m.api_keys.c.id).where(m.api_keys.c.admin.is_(True), m.api_keys.c.revoked_at.is_(None))
    ).scalars().all()
    if admins == [key_id]:
        raise Problem(409, "this is the last admin key; create another before revoking it")


def _sip_password(values: dict[str, Any], realm: str) -> None:
    password = values.pop("password", None)
    if password is not None:
        username = values["username"]
        values["realm"] = realm
        values["ha1_md5"] = compute_ha1("MD5", username, realm, password)
        values["ha1_sha256"] = compute_ha1("SHA-256", username, realm, password)


def _sip_account_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    _sip_password(values, ctx.sip_realm)
    return {}


def _sip_account_update(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> None:
    if "password" in values:
        # The HA1s bind username, realm and password together.
        values["username"] = conn.execute(
            select(m.sip_accounts.c.username).where(m.sip_accounts.c.id == ctx.object_id)
        ).scalar_one()
        _sip_password(values, ctx.sip_realm)
        del values["username"]


def _smpp_password(values: dict[str, Any]) -> None:
    password = values.pop("password", None)
    if password is not None:
        values["password_salt"], values["password_hash"] = new_secret_hash(password)


def _smpp_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    _smpp_password(values)
    return {}


def _smpp_update(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> None:
    _smpp_password(values)


def _http_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    customer_id = _customer_of_service(conn, values["service_id"])
    key_id, key = create_key(
        conn, ctx.now, admin=False, customer_id=customer_id, name="HTTP connection"
    )
    values["api_key_id"] = key_id
    return {"api_key": key}


# -- the collections ---------------------------------------------------------

STATUS = ("active", "suspended", "closed")

CUSTOMERS = Resource(
    "Customer",
    "customers",
    m.customers,
    (
        _id(),
        text("name", 200, "Customer name.", required=True, min_length=1),
        opt_text("email", 254, "Contact e-mail address."),
        opt_text("phone", 32, "Contact phone number."),
        opt_text("company", 200, "Company name."),
        choice("status", STATUS, "active, suspended or closed.", "active", admin_only=True),
        opt_text("notes", 2000, "Operator's notes.", admin_only=True),
        _created(),
        _updated(),
    ),
    "Customers of the carrier. A customer key sees only its own customer.",
    owner=lambda cid: m.customers.c.id == cid,
    customer_writes=frozenset({"update"}),
    filters=("status",),
)

ACCOUNTS = Resource(
    "Account",
    "accounts",
    m.accounts,
    (
        _id(),
        ref("customer_id", "customers", "Owner of the personal account.", required=True, immutable=True),
        opt_text("name", 200, "Label of the account."),
        text("currency", 3, "ISO 4217 currency code.", required=True, immutable=True, **CURRENCY),
        money("balance", "Current balance; it moves only through transactions.", default=None, readonly=True),
        money("credit_limit", "How far a prepaid balance may go below zero."),
        choice("billing_type", ("prepaid", "postpaid"), "prepaid or postpaid.", "prepaid"),
        choice("status", ("active", "blocked", "closed"), "Only active accounts may place traffic.", "active"),
        integer("call_limit", "Calls of this account up at once, on all trunks (0: no limit).", 0,
                maximum=1000000, admin_only=True),
        integer("cps_limit", "New calls per second of this account (0: no limit).", 0, maximum=100000,
                admin_only=True),
        _created(),
        _updated(),
    ),
    "Personal accounts: a customer's money in one currency.",
    owner=lambda cid: m.accounts.c.customer_id == cid,
    filters=("customer_id", "status"),
)

TRANSACTIONS = Resource(
    "Transaction",
    "transactions",
    m.ledger,
    (
        _id(),
        Field("account_id", "id", "The account moved.", readonly=True),
        choice(
            "kind",
            m.LEDGER_KINDS,
            "topup, refund and credit (a manual correction) add money; charge, "
            "writeoff (periodic fees) and debit (a manual correction) take it.",
            required=True,
        ),
        money(
            "amount",
            "Amount moved, greater than zero; the answer shows it signed (debits negative).",
            default=None,
            required=True,
            pattern=POSITIVE_MONEY,
        ),
        money("balance_after", "Balance right after this movement.", default=None, readonly=True),
        opt_text(
            "reference",
            200,
            "What the movement is for; unique per account and kind, so a retried movement is booked once.",
        ),
        opt_text("description", 500, "Free text."),
        _created(),
    ),
    "Ledger of every balance movement of an account.",
    owner=lambda cid: m.ledger.c.account_id.in_(_accounts_of(cid)),
    updatable=False,
    deletable=False,
)

TARIFF_PLANS = Resource(
    "TariffPlan",
    "tariff-plans",
    m.tariff_plans,
    (
        _id(),
        text("name", 200, "Unique name, e.g. \"Zero cost (Call)\".", required=True, min_length=1),
        text("currency", 3, "Currency of the prices.", required=True, immutable=True, **CURRENCY),
        opt_text("description", 500, "Free text."),
        _created(),
        _updated(),
    ),
    "Tariff plans. A plan whose rates are all zero is a zero-cost plan.",
)

RATES = Resource(
    "Rate",
    "rates",
    m.rates,
    (
        _id(),
        ref("tariff_plan_id", "tariff-plans", "Plan the rate belongs to.", required=True, immutable=True),
        text(
            "prefix",
            32,
            "Destination digits prefix; the longest match wins; empty matches everything.",
            required=True,
            pattern="^[0-9]*$",
        ),
        opt_text("description", 200, "Destination name."),
        money("price_per_minute", "Price of one minute of a call."),
        money("price_per_message", "Price of one message part."),
        money("price_per_use", "Price of one use (API, TTS, ASR, PUSH ID)."),
        money("connection_fee", "Charged once per answered call."),
        integer("increment_first", "First billing increment in seconds (60 in 60/60).", 60, minimum=1, maximum=3600),
        integer("increment_next", "Next billing increments in seconds.", 60, minimum=1, maximum=3600),
        _created(),
        _updated(),
    ),
    "Rates of tariff plans by destination prefix.",
    filters=("tariff_plan_id", "prefix"),
)

ROUTING_GROUPS = Resource(
    "RoutingGroup",
    "routing-groups",
    m.routing_groups,
    (
        _id(),
        text("name", 200, "Unique name.", required=True, min_length=1),
        opt_text("description", 500, "Free text."),
        _created(),
        _updated(),
    ),
    "Routing groups: ordered sets of trunks and SMPP links a service may use.",
)

TRUNKS = Resource(
    "Trunk",
    "trunks",
    m.trunks,
    (
        _id(),
        text("name", 100, "Unique trunk name.", required=True, min_length=1),
        text("host", 253, "Peer host name or IP address.", required=True, **HOST),
        integer("port", "Peer SIP port.", 5060, minimum=1, maximum=65535),
        choice("transport", ("udp", "tcp", "tls"), "SIP transport to the peer.", "udp"),
        flag("enabled", "Disabled trunks are never routed to.", True),
        _created(),
        _updated(),
    ),
    "SIP trunks: carrier peers calls are routed to and received from.",
)

_LINK_TIMERS = ("transaction_timeout_ms", "heartbeat_interval_ms", "receiving_timeout_ms")


def _link_timers_check(conn: Connection, values: dict[str, Any], link_id: int | None) -> None:
    """Seed 001: transaction timeout < heartbeat interval < receiving timeout (a
    transaction timeout of 0 waits as long as the session and is always allowed)."""
    if not any(name in values for name in _LINK_TIMERS):
        return
    current = {name: m.smpp_links.c[name].default.arg for name in _LINK_TIMERS}  # a new link's defaults
    if link_id is not None:
        row = conn.execute(select(*(m.smpp_links.c[name] for name in _LINK_TIMERS))
                           .where(m.smpp_links.c.id == link_id)).first()
        if row is not None:
            current = dict(row._mapping)
    current.update((name, values[name]) for name in _LINK_TIMERS if name in values)
    transaction, heartbeat, receiving = (current[name] for name in _LINK_TIMERS)
    # Each value alone is valid: the combination conflicts (409, as for other cross-field rules).
    if transaction and transaction >= heartbeat:
        raise Problem(409, f"transaction_timeout_ms ({transaction}) must be less than heartbeat_interval_ms "
                           f"({heartbeat})")
    if heartbeat >= receiving:
        raise Problem(409, f"heartbeat_interval_ms ({heartbeat}) must be less than receiving_timeout_ms "
                           f"({receiving})")


def _link_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    _link_timers_check(conn, values, None)
    return {}


def _link_update(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> None:
    _link_timers_check(conn, values, ctx.object_id)


SMPP_LINKS = Resource(
    "SmppLink",
    "smpp-links",
    m.smpp_links,
    (
        _id(),
        text("name", 100, "Unique link name.", required=True, min_length=1),
        flag("enabled", "Disabled links are not connected.", True),
        text("host", 253, "SMG address.", required=True, **HOST),
        integer("port", "SMG port.", required=True, minimum=1, maximum=65535),
        opt_text("system_id", 15, "Login name (bind system_id)."),
        opt_text("password", 8, "Login password (never returned).", writeonly=True),
        choice(
            "mode",
            ("transceiver", "transmitter", "receiver"),
            "Receiving and sending mode: send and receive, send only, receive only.",
            "transceiver",
        ),
        choice("pdu_type", ("submit_sm", "data_sm"), "PDU used to send.", "submit_sm"),
        opt_text("sender_id_prefixes", 500, "Sender ID prefixes, separated by ';'.", **PREFIXES),
        opt_text("accepted_number_prefixes", 500, "Accepted number prefixes, separated by ';'.", **PREFIXES),
        opt_text("default_sender_id", 20, "Default sender ID."),
        integer("client_port", "Local port to bind (0: any).", 0, maximum=65535),
        integer("mo_port", "Port for receiving upstream messages (0: any).", 0, maximum=65535),
        integer("heartbeat_interval_ms", "enquire_link interval.", 30000, minimum=1),
        integer("max_missed_heartbeats", "Missed enquire_link responses before reconnecting.", 3, maximum=99999),
        integer("resend_times", "Resends after a failure response.", 0),
        integer("resend_wait_ms", "Wait before a resend.", 0),
        integer("receiving_timeout_ms", "Disconnect after this long with no data.", 180000, minimum=1),
        integer("max_error_packets", "Consecutive error packets before the link is dropped.", 10),
        integer("window_size", "Sliding window: requests in flight.", 16, minimum=1, maximum=99999),
        integer("transaction_timeout_ms", "Wait for a response.", 6000),
        integer("max_message_length", "Largest message in bytes.", 2048, minimum=1, maximum=99999),
        choice(
            "split_mode",
            ("disabled", "not_split", "physical", "ultra_long"),
            "Oversized SMS splitting mode.",
            "disabled",
        ),
        integer("max_content_length", "Bytes per part when splitting.", 140, minimum=1, maximum=99999),
        integer("max_receiving_rate", "Messages per second received (null: no limit).", nullable=True, minimum=1),
        integer("max_sending_rate", "Messages per second sent (null: no limit).", nullable=True, minimum=1),
        integer("extra_traffic_policy", "Policy beyond the rate (null: none).", nullable=True, minimum=1),
        choice("concatenation_mode", ("udh", "sar"), "Long message concatenation: GSM UDH or SMPP SAR TLVs.", "udh"),
        opt_text("system_type", 12, "ESME type (bind system_type)."),
        integer("addr_ton", "ESME address TON.", 0, maximum=27),
        integer("addr_npi", "ESME address NPI.", 0, maximum=255),
        opt_text("address_range", 40, "ESME address range."),
        opt_text("service_type", 5, "submit_sm service_type."),
        integer("source_addr_ton", "Source address TON.", 0, maximum=255),
        integer("source_addr_npi", "Source address NPI.", 0, maximum=255),
        integer("dest_addr_ton", "Destination address TON.", 0, maximum=255),
        integer("dest_addr_npi", "Destination address NPI.", 0, maximum=255),
        integer("esm_class", "Message type (esm_class).", 0, maximum=255),
        choice("message_format", ("ascii", "binary", "ucs2"), "Message format.", "ascii"),
        integer("protocol_id", "GSM protocol ID.", 0, maximum=255),
        integer("registered_delivery", "0: no receipts, 1: success and failure, 2: failure only.", 2, maximum=2),
        flag("replace_if_present", "Replacement flag.", False),
        integer("default_msg_id", "Default message ID (sm_default_msg_id).", 0, maximum=255),
        _created(),
        _updated(),
    ),
    "Upstream SMPP links to SMSCs (seed 001 gateway parameters and defaults; transaction_timeout_ms < "
    "heartbeat_interval_ms < receiving_timeout_ms, else 409).",
    on_create=_link_create,
    on_update=_link_update,
)

MEMBERS = Resource(
    "RoutingGroupMember",
    "routing-group-members",
    m.routing_group_members,
    (
        _id(),
        ref("routing_group_id", "routing-groups", "Group the member belongs to.", required=True, immutable=True),
        ref("trunk_id", "trunks", "The SIP trunk (or set smpp_link_id).", nullable=True, immutable=True),
        ref("smpp_link_id", "smpp-links", "The SMPP link (or set trunk_id).", nullable=True, immutable=True),
        integer("priority", "Distribution priority: higher is tried first.", 0, maximum=1000000),
        integer("weight", "Share among members of equal priority.", 100, maximum=1000000),
        opt_text("prefixes", 500, "Destination prefixes carried, separated by ';' (empty: all).", **PREFIXES),
        _created(),
        _updated(),
    ),
    "Members of routing groups.",
    filters=("routing_group_id", "trunk_id", "smpp_link_id"),
)

SERVICES = Resource(
    "Service",
    "services",
    m.services,
    (
        _id(),
        ref("account_id", "accounts", "Personal account the service is charged to.", required=True, immutable=True),
        choice("type", m.SERVICE_TYPES, "Type of service.", required=True, immutable=True),
        opt_text("name", 200, "Label."),
        ref("tariff_plan_id", "tariff-plans", "Tariff plan (a zero-cost plan is allowed).", required=True),
        ref("routing_group_id", "routing-groups", "Routing group of the service.", nullable=True),
        integer("distribution_priority", "Higher-priority services are served first.", 0, maximum=1000000),
        money("periodic_fee", "Fixed fee written off once per period."),
        choice("fee_period", m.FEE_PERIODS, "Period of the fee (none: no fee).", "none"),
        choice("status", ("active", "suspended"), "Suspended services carry no traffic.", "active"),
        _created(),
        _updated(),
    ),
    "Services connected to personal accounts.",
    owner=lambda cid: m.services.c.account_id.in_(_accounts_of(cid)),
    filters=("account_id", "type", "status"),
)

SIP_CONNECTIONS = Resource(
    "SipConnection",
    "connections/sip",
    m.sip_connections,
    (
        _id(),
        ref("service_id", "services", "SIP telephony service.", required=True, immutable=True),
        ref("trunk_id", "trunks", "The trunk (its name is the seed's Trunk Name).", required=True),
        choice(
            "auth_type",
            ("registration", "ip"),
            "registration: require registration with credentials; ip: do not require "
            "registration, recognise the trunk by its source address.",
            "registration",
        ),
        opt_text("auth_user", 100, "SIP auth user."),
        opt_text("auth_password", 100, "SIP auth password (never returned).", writeonly=True),
        opt_text("outbound_src_hardware", 500, "Source addresses of the peer's equipment (IP or CIDR, ';'-separated)."),
        integer("cps_limit", "Calls per second (0: no limit).", 0, maximum=100000),
        integer("call_limit", "Simultaneous calls (0: no limit).", 0, maximum=1000000),
        flag("voice_record", "Record calls on this trunk."),
        integer("area_id", "Area ID (always 1).", 1, minimum=1, maximum=1),
        text("interface_name", 64, "Interface name.", default="mitto"),
        flag("comedia", "Send media to where it comes from, not to the SDP address."),
        flag("force_rport", "Add rport and answer to the source address and port."),
        flag("filter_caching", "Cache filter information instead of asking per call."),
        flag("logging", "Write a SIP message trace for this trunk."),
        integer("qualify_ms", "OPTIONS interval in milliseconds (0: off).", 0, maximum=3600000),
        integer("strip_digits", "Leading digits removed from the called number sent to the trunk.", 0, maximum=16),
        text("add_prefix", 16, "Digits put in front of the called number sent to the trunk.", default="",
             pattern="^[0-9]*$"),
        flag("e164", "Send the called number in E.164 form with a leading '+'."),
        flag("media_bypass", "Leave media to the endpoints (no relay) when the caller is reachable: "
             "no recording, DTMF detection or media timeout on such calls."),
        _created(),
        _updated(),
    ),
    "SIP connections of SIP telephony services (seed 000).",
    owner=_by_service(m.sip_connections),
    filters=("service_id", "trunk_id"),
)

SMPP_CONNECTIONS = Resource(
    "SmppConnection",
    "connections/smpp",
    m.smpp_connections,
    (
        _id(),
        ref("service_id", "services", "API or PUSH ID service.", required=True, immutable=True),
        text("login", 15, "SMPP login (system_id), Latin letters and digits.", required=True, pattern="^[A-Za-z0-9_.-]{1,15}$"),
        Field(
            "password",
            "string",
            "SMPP password (never returned; stored as a salted hash).",
            required=True,
            writeonly=True,
            column=False,
            min_length=1,
            max_length=8,
        ),
        text("system_type", 12, "Identificator on SMSC; \"0\" means none.", default="0"),
        integer("reception_speed", "Reception speed restriction, messages per second.", 50, minimum=1, maximum=100000),
        _created(),
        _updated(),
    ),
    "SMPP connections: customers bind to switchd with these credentials.",
    owner=_by_service(m.smpp_connections),
    filters=("service_id", "login"),
    on_create=_smpp_create,
    on_update=_smpp_update,
)

HTTP_CONNECTIONS = Resource(
    "HttpConnection",
    "connections/http",
    m.http_connections,
    (
        _id(),
        ref("service_id", "services", "API or PUSH ID service.", required=True, immutable=True),
        Field("api_key_id", "id", "The API access key of this connection.", readonly=True),
        choice("callback_version", ("V1", "V2", "V4"), "Callback payload version.", "V1"),
        flag("start_callback", "Send the start-of-processing status."),
        flag("end_callback", "Send the end-of-processing status."),
        choice("transfer_method", ("GET", "POST"), "HTTP method of callbacks.", "POST"),
        opt_text("url", 2000, "Callback URL (http or https).", pattern=URL_PATTERN),
        opt_text("username", 200, "Basic auth user for callbacks."),
        opt_text("password", 200, "Basic auth password for callbacks (never returned).", writeonly=True),
        flag("callback_repeat", "Resend a callback that failed."),
        flag("pass_a_number", "Pass the A-number."),
        flag("status_survey", "Poll the external system for statuses."),
        flag("sending_restriction", "Anti-fraud: cap sends per destination number.", admin_only=True),
        integer(
            "number_of_sendings",
            "Sends allowed per number with sending_restriction.",
            0,
            maximum=1000000,
            admin_only=True,
        ),
        Field("headers", "object", "Extra HTTP headers sent with callbacks.", default={}),
        _created(),
        _updated(),
    ),
    "HTTP connections. Creating one issues its API access key, shown once.",
    owner=_by_service(m.http_connections),
    customer_writes=frozenset({"update"}),
    filters=("service_id",),
    on_create=_http_create,
    once_fields=(Field("api_key", "string", "The API access key (shown only now)."),),
)

IMAP_CONNECTIONS = Resource(
    "ImapConnection",
    "connections/imap",
    m.imap_connections,
    (
        _id(),
        ref("service_id", "services", "API service.", required=True, immutable=True),
        text("server", 253, "IMAP server.", required=True, **HOST),
        integer("port", "IMAP port.", 993, minimum=1, maximum=65535),
        text("username", 200, "IMAP login.", required=True, min_length=1),
        text("password", 200, "IMAP password (never returned).", required=True, writeonly=True, min_length=1),
        choice("protection", ("none", "ssl", "starttls"), "Connection protection.", "ssl"),
        text("folder", 200, "Incoming folder.", default="INBOX", min_length=1),
        _created(),
        _updated(),
    ),
    "IMAP connections: a letter in the folder is a trigger.",
    owner=_by_service(m.imap_connections),
    customer_writes=frozenset({"create", "update", "delete"}),
    filters=("service_id",),
)

API_KEYS = Resource(
    "ApiKey",
    "api-keys",
    m.api_keys,
    (
        _id(),
        opt_text("name", 200, "Label."),
        Field(
            "customer_id",
            "id",
            "Customer the key acts for. Without it (admin callers only) the key is an "
            "admin key; a customer key always makes keys for its own customer.",
            ref="customers",
            nullable=True,
            immutable=True,
            admin_only=True,
        ),
        Field("admin", "boolean", "An admin key (no customer) sees and changes everything.", readonly=True),
        Field("prefix", "string", "Public part of the key, to tell keys apart.", readonly=True),
        _created(),
    ),
    "API keys. The key itself is returned once, by the create call.",
    owner=lambda cid: m.api_keys.c.customer_id == cid,
    customer_writes=frozenset({"create", "update", "delete"}),
    filters=("customer_id",),
    on_create=_api_key_create,
    once_fields=(Field("key", "string", "The key (shown only now)."),),
    deleted_column="revoked_at",
    on_delete=_api_key_delete,
)

SIP_ACCOUNTS = Resource(
    "SipAccount",
    "sip-accounts",
    m.sip_accounts,
    (
        _id(),
        ref("service_id", "services", "SIP telephony service the account belongs to.", required=True, immutable=True),
        text(
            "username",
            64,
            "SIP user name (digest username and AOR user part), unique on the switch.",
            required=True,
            immutable=True,
            pattern=r"^[A-Za-z0-9._+-]{1,64}$",
        ),
        Field(
            "password",
            "string",
            "Digest password (never returned; stored as MD5 and SHA-256 HA1 for the realm).",
            required=True,
            writeonly=True,
            column=False,
            min_length=8,
            max_length=128,
            pattern=r"^[!-~]{8,128}$",
        ),
        Field("realm", "string", "Digest realm the HA1s were computed for ([sip] realm).", readonly=True),
        flag("enabled", "Disabled accounts cannot register or call.", True),
        opt_text("caller_id", 32, "Number presented on calls from this account.", pattern=r"^\+?[0-9]{1,31}$"),
        _created(),
        _updated(),
    ),
    "SIP accounts of customers' devices: they register to switchd with digest authentication.",
    owner=_by_service(m.sip_accounts),
    customer_writes=frozenset({"create", "update", "delete"}),
    filters=("service_id", "username"),
    on_create=_sip_account_create,
    on_update=_sip_account_update,
)

NUMBER = dict(pattern=r"^\+?[0-9]{1,31}$")

NUMBERS = Resource(
    "Number",
    "numbers",
    m.numbers,
    (
        _id(),
        text("number", 32, "The number (digits, optionally with a leading '+'), unique on the switch.",
             required=True, immutable=True, **NUMBER),
        ref("service_id", "services", "INCOMING or REDIRECTION service that owns and pays for the number.",
            required=True, admin_only=True),
        ref("sip_account_id", "sip-accounts",
            "Ring only this account's devices (null: every SIP account of the service's account).", nullable=True),
        opt_text("redirect_always", 32, "Send every call to this number instead.", **NUMBER),
        opt_text("redirect_busy", 32, "Send the call here when every device is busy.", **NUMBER),
        opt_text("redirect_no_answer", 32, "Send the call here when nobody answers in time.", **NUMBER),
        opt_text("redirect_unregistered", 32, "Send the call here when no device is registered.", **NUMBER),
        integer("no_answer_seconds", "How long devices ring before the call counts as unanswered.", 20,
                minimum=1, maximum=600),
        choice("language", LANGUAGES,
               "Callback access numbers: the IVR's language for clients without one of their own "
               "(null: English).", None, nullable=True),
        _created(),
        _updated(),
    ),
    "The switch's own numbers: calls to them ring the customer's registered devices (INCOMING) "
    "or go on to pre-set numbers (REDIRECTION).",
    owner=lambda cid: m.numbers.c.service_id.in_(_services_of(cid)),
    customer_writes=frozenset({"update"}),
    filters=("service_id", "number"),
)

def _clients_of(customer_id: int):
    return select(m.callback_clients.c.id).where(m.callback_clients.c.service_id.in_(_services_of(customer_id)))


CALLBACK_CLIENTS = Resource(
    "CallbackClient",
    "callback-clients",
    m.callback_clients,
    (
        _id(),
        ref("service_id", "services", "Service that pays for the client's callbacks and routes them.",
            required=True, immutable=True),
        text("login", 32, "Login for U.<login> in SMS commands.", required=True, pattern="^[A-Za-z0-9_.-]{1,32}$"),
        Field(
            "password",
            "string",
            "Password for P.<password> (never returned; stored as a salted hash).",
            required=True,
            writeonly=True,
            column=False,
            min_length=1,
            max_length=64,
        ),
        choice("language", LANGUAGES,
               "Language of the callback IVR (null: the access number's, else English).", None, nullable=True),
        choice("status", ("active", "blocked"), "A blocked client is refused.", "active"),
        _created(),
        _updated(),
    ),
    "Callback clients (seed 002): SMS and ANI callback users.",
    owner=_by_service(m.callback_clients),
    filters=("service_id", "login"),
    on_create=_smpp_create,
    on_update=_smpp_update,
)

CALLBACK_NUMBERS = Resource(
    "CallbackNumber",
    "callback-numbers",
    m.callback_numbers,
    (
        _id(),
        ref("client_id", "callback-clients", "The client this number identifies.", required=True, immutable=True),
        text("number", 32, "Phone number (SMS sender or caller), unique on the switch.", required=True, **NUMBER),
        _created(),
        _updated(),
    ),
    "Numbers that authorise a callback client (by SMS sender or caller number); R.<number> adds one.",
    owner=lambda cid: m.callback_numbers.c.client_id.in_(_clients_of(cid)),
    filters=("client_id", "number"),
)

PHONE_DIRECTORY = Resource(
    "DirectoryEntry",
    "phone-directory",
    m.phone_directory,
    (
        _id(),
        ref("client_id", "callback-clients", "Whose directory.", required=True, immutable=True),
        integer("position", "Entry number for N<position>.", None, required=True, minimum=1, maximum=999),
        text("name", 64, "Name for B.<name> (compared without regard to case).", required=True),
        text("number", 32, "The number called.", required=True, **NUMBER),
        _created(),
        _updated(),
    ),
    "Callback clients' phone directories.",
    owner=lambda cid: m.phone_directory.c.client_id.in_(_clients_of(cid)),
    filters=("client_id",),
)

REGISTRATIONS = Resource(
    "Registration",
    "registrations",
    m.registrations,
    tuple(
        Field(name, typ, doc, readonly=True, nullable=nullable)
        for name, typ, doc, nullable in (
            ("id", "id", "Identifier.", False),
            ("sip_account_id", "id", "The registered account.", False),
            ("contact", "string", "Contact URI.", False),
            ("expires_at", "datetime", "When the binding lapses unless refreshed.", False),
            ("source_transport", "string", "Transport the REGISTER came over.", False),
            ("source_host", "string", "Address the REGISTER came from.", False),
            ("source_port", "integer", "Port the REGISTER came from.", False),
            ("behind_nat", "boolean", "The source differs from the Contact: requests go to the source.", False),
            ("user_agent", "string", "User-Agent of the device.", True),
            ("node", "string", "switchd node holding the binding.", True),
            ("created_at", "datetime", "First registration.", False),
            ("updated_at", "datetime", "Last refresh.", False),
        )
    ),
    "Registrar bindings of SIP accounts (read-only).",
    owner=lambda cid: m.registrations.c.sip_account_id.in_(
        select(m.sip_accounts.c.id).where(m.sip_accounts.c.service_id.in_(_services_of(cid)))
    ),
    creatable=False,
    updatable=False,
    deletable=False,
    filters=("sip_account_id",),
)

CDRS = Resource(
    "Cdr",
    "cdrs",
    m.cdrs,
    tuple(
        Field(name, typ, doc, readonly=True, nullable=nullable)
        for name, typ, doc, nullable in (
            ("id", "id", "Identifier.", False),
            ("call_id", "string", "Call identifier (unique).", False),
            ("account_id", "id", "Account charged.", False),
            ("service_id", "id", "Service used.", True),
            ("trunk_id", "id", "Trunk used.", True),
            ("direction", "string", "outbound, inbound or callback.", False),
            ("caller", "string", "Calling number.", True),
            ("callee", "string", "Called number.", True),
            ("start_time", "datetime", "When the call arrived.", False),
            ("answer_time", "datetime", "When it was answered.", True),
            ("end_time", "datetime", "When it ended.", False),
            ("ring_seconds", "integer", "Seconds from start to answer (or end).", False),
            ("billable_seconds", "integer", "Seconds from answer to end.", False),
            ("hangup_side", "string", "caller, callee or switch.", True),
            ("sip_code", "integer", "Final SIP status code.", True),
            ("reason", "string", "Why the call ended.", True),
            ("rate", "money", "Price per minute applied.", True),
            ("charge", "money", "Amount charged.", False),
            ("currency", "string", "Currency of rate and charge.", True),
            ("recording", "string", "Recording file, if any.", True),
            ("node", "string", "switchd node that carried the call.", True),
            ("created_at", "datetime", "When the record was written.", False),
        )
    ),
    "Call detail records (xDRs), written by switchd; read-only here.",
    owner=lambda cid: m.cdrs.c.account_id.in_(_accounts_of(cid)),
    creatable=False,
    updatable=False,
    deletable=False,
    filters=("account_id", "service_id", "trunk_id"),
)

# -- IIF peers provisioned through the API (on top of [iif] peers) ---------------------------

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEX = r"[0-9A-Fa-f]{1,4}"
#: An IPv4 address (no leading zeros) or an IPv6 address in hex groups: what ipaddress reads.
IP_PATTERN = (
    rf"^(({_OCTET}\.){{3}}{_OCTET}|({_HEX}:){{7}}{_HEX}|({_HEX}:){{1,7}}:|({_HEX}:){{1,6}}:{_HEX}"
    rf"|({_HEX}:){{1,5}}(:{_HEX}){{1,2}}|({_HEX}:){{1,4}}(:{_HEX}){{1,3}}|({_HEX}:){{1,3}}(:{_HEX}){{1,4}}"
    rf"|({_HEX}:){{1,2}}(:{_HEX}){{1,5}}|{_HEX}:(:{_HEX}){{1,6}}|:((:{_HEX}){{1,7}}|:))$"
)
#: A dialable number as IIF sends it: at most 31 characters, '+' included.
CALLER_PATTERN = r"^(\+[0-9]{1,30}|[0-9]{1,31})$"


def _iif_peer_check(conn: Connection, values: dict[str, Any], peer_id: int | None) -> None:
    """One spelling per address (so the unique (host, port) holds), and a caller for the calls."""
    if "host" in values:
        address = ipaddress.ip_address(values["host"])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        values["host"] = str(address)
    if "default_caller" in values or "external_line_mode" in values:
        current: dict[str, Any] = {"default_caller": None, "external_line_mode": False}
        if peer_id is not None:
            row = conn.execute(select(m.iif_peers.c.default_caller, m.iif_peers.c.external_line_mode)
                               .where(m.iif_peers.c.id == peer_id)).one()
            current = dict(row._mapping)
        current.update((k, values[k]) for k in current if k in values)
        if not current["default_caller"] and not current["external_line_mode"]:
            raise Problem(409, "set default_caller, or turn external_line_mode on (the trunk's own number "
                               "is then the caller): some carriers reject calls without a caller number")
    elif peer_id is None:
        raise Problem(409, "set default_caller, or turn external_line_mode on")


def _iif_peer_create(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> dict[str, Any]:
    _iif_peer_check(conn, values, None)
    return {}


def _iif_peer_update(conn: Connection, values: dict[str, Any], ctx: WriteContext) -> None:
    _iif_peer_check(conn, values, ctx.object_id)


IIF_PEERS = Resource(
    "IifPeer",
    "iif-peers",
    m.iif_peers,
    (
        _id(),
        text("host", 64, "IP address the application server sends REQUESTs from (stored in its usual spelling; "
             "an IPv4-mapped IPv6 address as IPv4).", required=True, pattern=IP_PATTERN),
        integer("port", "Its source port (0: any port of that address).", 0, maximum=65535),
        ref("service_id", "services", "The service that pays for the peer's callbacks and routes both calls.",
            required=True),
        opt_text("default_caller", 32, "Calling number of both calls (the seed's \"Default caller\"); "
                 "required unless external_line_mode is on.", pattern=CALLER_PATTERN),
        flag("external_line_mode", "Without default_caller, present the trunk's own number."),
        flag("enabled", "Disabled peers are ignored like strangers.", True),
        _created(),
        _updated(),
    ),
    "IIF application servers (seed 003) allowed to send REQUESTs, besides those of [iif] peers.",
    filters=("service_id", "host", "enabled"),
    on_create=_iif_peer_create,
    on_update=_iif_peer_update,
)


#: Top-level collections, in the order the OpenAPI document lists them.
COLLECTIONS: tuple[Resource, ...] = (
    CUSTOMERS,
    ACCOUNTS,
    SERVICES,
    SIP_CONNECTIONS,
    SMPP_CONNECTIONS,
    HTTP_CONNECTIONS,
    IMAP_CONNECTIONS,
    TARIFF_PLANS,
    RATES,
    ROUTING_GROUPS,
    MEMBERS,
    TRUNKS,
    SMPP_LINKS,
    SIP_ACCOUNTS,
    REGISTRATIONS,
    NUMBERS,
    CALLBACK_CLIENTS,
    CALLBACK_NUMBERS,
    PHONE_DIRECTORY,
    IIF_PEERS,
    API_KEYS,
    CDRS,
)

BY_PATH = {r.path: r for r in COLLECTIONS}
BY_PATH[TRANSACTIONS.path] = TRANSACTIONS
