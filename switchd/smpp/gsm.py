"""Text codings of SMPP ``data_coding``: the GSM 03.38 alphabet and the others.

SMPP carries the GSM 7-bit default alphabet (3GPP TS 23.038 §6.2.1) *unpacked*:
one septet per octet, extension characters as the escape ``0x1B`` followed by
their code.  :func:`encode` / :func:`decode` work in that form for
``data_coding`` 0; :func:`pack_septets` / :func:`unpack_septets` produce and
read the packed air form (with the fill bits that follow a user data header)
for the rare links that want it.

Supported ``data_coding`` values (SMPP 3.4 §5.2.19):

====  ==========================  ==========================================
0     SMSC default alphabet       GSM 7-bit default + basic extension table
1     IA5 (CCITT T.50) / ASCII    7-bit ASCII
2, 4  octet unspecified           binary: bytes in, bytes out, no text
3     Latin-1 (ISO-8859-1)
6     Cyrillic (ISO-8859-5)
7     Latin/Hebrew (ISO-8859-8)
8     UCS2 (ISO/IEC-10646)        UTF-16BE: characters beyond the BMP become
                                  surrogate pairs, as handsets expect
10    ISO-2022-JP
14    KS C 5601                   EUC-KR
0xC0-0xDF                         GSM message-waiting groups: GSM 7-bit
0xE0-0xEF                         message waiting, UCS2
0xF0-0xFF                         data coding/message class: bit 2 set is
                                  8-bit data, clear is GSM 7-bit
====  ==========================  ==========================================

Anything else (JIS 5 and 13, pictograms, reserved values) raises
:class:`CodingError`: we never guess a character set.
"""

from __future__ import annotations

__all__ = [
    "BASIC_TABLE",
    "DC_BINARY",
    "DC_CYRILLIC",
    "DC_DEFAULT",
    "DC_HEBREW",
    "DC_IA5",
    "DC_ISO2022JP",
    "DC_KSC5601",
    "DC_LATIN1",
    "DC_OCTET",
    "DC_UCS2",
    "ESCAPE",
    "EXTENSION_TABLE",
    "CodingError",
    "alphabet",
    "choose_coding",
    "decode",
    "encode",
    "gsm_decode",
    "gsm_encode",
    "is_gsm",
    "is_septet_coding",
    "pack_septets",
    "septet_length",
    "udh_fill_bits",
    "unpack_septets",
]

DC_DEFAULT = 0x00
DC_IA5 = 0x01
DC_BINARY = 0x02
DC_LATIN1 = 0x03
DC_OCTET = 0x04
DC_CYRILLIC = 0x06
DC_HEBREW = 0x07
DC_UCS2 = 0x08
DC_ISO2022JP = 0x0A
DC_KSC5601 = 0x0E

ESCAPE = 0x1B

#: GSM 7-bit default alphabet, indexed by septet (0x1B is the escape, not a character).
BASIC_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)

#: Basic extension table: code after the escape -> character.
EXTENSION_TABLE: dict[int, str] = {
    0x0A: "\f",  # page break
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

# character -> its unpacked septets (one or two octets)
_ENCODE: dict[str, bytes] = {char: bytes((code,)) for code, char in enumerate(BASIC_TABLE) if code != ESCAPE}
_ENCODE.update({char: bytes((ESCAPE, code)) for code, char in EXTENSION_TABLE.items()})
_EXTENDED = frozenset(EXTENSION_TABLE.values())

# alphabet names returned by alphabet()
GSM = "gsm"
ASCII = "ascii"
BINARY = "binary"
UCS2 = "ucs2"

_PYTHON_CODECS = {
    DC_IA5: "ascii",
    DC_LATIN1: "latin-1",
    DC_CYRILLIC: "iso8859-5",
    DC_HEBREW: "iso8859-8",
    DC_ISO2022JP: "iso2022-jp",
    DC_KSC5601: "euc-kr",
}


class CodingError(ValueError):
    """Text that a coding cannot carry, or octets that are not valid in it.

    Attributes:
        data_coding: the SMPP ``data_coding`` value involved.
        position: index of the offending character or octet, when known.
        reason: what is wrong.
    """

    def __init__(self, reason: str, data_coding: int, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data_coding = data_coding
        self.position = position


def alphabet(data_coding: int) -> str:
    """Name the alphabet of a ``data_coding``: ``gsm``, ``ucs2``, ``binary`` or a Python codec.

    Raises :class:`CodingError` for values we cannot interpret.
    """
    if data_coding == DC_DEFAULT:
        return GSM
    if data_coding in (DC_BINARY, DC_OCTET):
        return BINARY
    if data_coding == DC_UCS2:
        return UCS2
    codec = _PYTHON_CODECS.get(data_coding)
    if codec is not None:
        return codec
    if 0xC0 <= data_coding <= 0xDF:
        return GSM
    if 0xE0 <= data_coding <= 0xEF:
        return UCS2
    if 0xF0 <= data_coding <= 0xFF:
        return BINARY if data_coding & 0x04 else GSM
    raise CodingError(f"unsupported data_coding 0x{data_coding:02X}", data_coding)


def is_septet_coding(data_coding: int) -> bool:
    """True when the air interface carries this coding as 7-bit septets (160 per SMS)."""
    try:
        return alphabet(data_coding) == GSM
    except CodingError:
        return False


# --------------------------------------------------------------------------
# GSM 7-bit, unpacked
# --------------------------------------------------------------------------


def is_gsm(text: str) -> bool:
    """Every character is in the default alphabet or its basic extension table."""
    encode_table = _ENCODE
    return all(char in encode_table for char in text)


def septet_length(text: str) -> int:
    """Septets ``text`` takes in GSM 7-bit; extension characters count as 2."""
    length = 0
    for position, char in enumerate(text):
        if char in _EXTENDED:
            length += 2
        elif char in _ENCODE:
            length += 1
        else:
            raise CodingError(f"{char!r} is not in the GSM 7-bit alphabet", DC_DEFAULT, position)
    return length


def gsm_encode(text: str) -> bytes:
    """GSM 7-bit default alphabet, one septet per octet (SMPP ``data_coding`` 0)."""
    encode_table = _ENCODE
    try:
        return b"".join([encode_table[char] for char in text])
    except KeyError as error:
        char = error.args[0]
        raise CodingError(f"{char!r} is not in the GSM 7-bit alphabet", DC_DEFAULT, text.index(char)) from None


def gsm_decode(data: bytes, errors: str = "strict") -> str:
    """Decode unpacked GSM septets.

    An escape followed by a code the extension table does not define shows the
    basic-table character for that code, and an escape followed by another escape
    shows a space (TS 23.038 §6.2.1.1).  Octets above 0x7F and a trailing lone
    escape are errors (``errors="strict"``) or U+FFFD (``errors="replace"``).
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    out: list[str] = []
    basic = BASIC_TABLE
    index = 0
    end = len(data)
    while index < end:
        octet = data[index]
        if octet == ESCAPE:
            if index + 1 >= end:
                if errors == "strict":
                    raise CodingError("escape at the end of GSM text", DC_DEFAULT, index)
                out.append("\ufffd")
                break
            code = data[index + 1]
            if code > 0x7F:
                if errors == "strict":
                    raise CodingError(f"octet 0x{code:02X} is not a GSM septet", DC_DEFAULT, index + 1)
                out.append("\ufffd")
            elif code == ESCAPE:
                out.append(" ")
            else:
                out.append(EXTENSION_TABLE.get(code) or basic[code])
            index += 2
            continue
        if octet > 0x7F:
            if errors == "strict":
                raise CodingError(f"octet 0x{octet:02X} is not a GSM septet", DC_DEFAULT, index)
            out.append("\ufffd")
        else:
            out.append(basic[octet])
        index += 1
    return "".join(out)


# --------------------------------------------------------------------------
# All codings
# --------------------------------------------------------------------------


def encode(data_coding: int, content: str | bytes) -> bytes:
    """Encode text for ``data_coding``; binary codings take (and return) bytes as they are."""
    name = alphabet(data_coding)
    if name == BINARY:
        if not isinstance(content, (bytes, bytearray)):
            raise CodingError(f"data_coding 0x{data_coding:02X} is binary: give bytes, not text", data_coding)
        return bytes(content)
    if not isinstance(content, str):
        raise CodingError(f"data_coding 0x{data_coding:02X} carries text: give str, not bytes", data_coding)
    if name == GSM:
        try:
            return gsm_encode(content)
        except CodingError as error:
            raise CodingError(error.reason, data_coding, error.position) from None
    codec = "utf-16-be" if name == UCS2 else name
    try:
        return content.encode(codec)
    except UnicodeEncodeError as error:
        raise CodingError(
            f"{content[error.start]!r} cannot be sent with data_coding 0x{data_coding:02X}",
            data_coding,
            error.start,
        ) from None


def decode(data_coding: int, data: bytes, errors: str = "strict") -> str:
    """Decode a short message's octets to text.

    Binary codings raise :class:`CodingError` (they carry no text); so do
    octets that are invalid in the coding unless ``errors="replace"``.
    """
    name = alphabet(data_coding)
    if name == BINARY:
        raise CodingError(f"data_coding 0x{data_coding:02X} is binary, not text", data_coding)
    if name == GSM:
        try:
            return gsm_decode(data, errors)
        except CodingError as error:
            raise CodingError(error.reason, data_coding, error.position) from None
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    codec = "utf-16-be" if name == UCS2 else name
    try:
        return bytes(data).decode(codec, errors)
    except UnicodeDecodeError as error:
        raise CodingError(
            f"invalid {codec} octets at {error.start}: {error.reason}", data_coding, error.start
        ) from None


def choose_coding(text: str) -> tuple[int, bytes]:
    """GSM 7-bit (0) when every character is in it, else UCS2 (8); with the encoded octets."""
    if is_gsm(text):
        return DC_DEFAULT, gsm_encode(text)
    try:
        return DC_UCS2, text.encode("utf-16-be")
    except UnicodeEncodeError as error:  # lone surrogates in the str
        raise CodingError(f"{text[error.start]!r} is not a character", DC_UCS2, error.start) from None


# --------------------------------------------------------------------------
# Packed septets (TS 23.038 §6.1.2.1.1)
# --------------------------------------------------------------------------


def udh_fill_bits(udh_octets: int) -> int:
    """Fill bits after a user data header of ``udh_octets`` (UDHL included) so text starts on a septet."""
    return (7 - (udh_octets * 8) % 7) % 7


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets (values 0-127) LSB first, after ``fill_bits`` zero bits."""
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0-6, not {fill_bits}")
    accumulator = 0
    bits = fill_bits
    out = bytearray()
    for position, septet in enumerate(septets):
        if septet > 0x7F:
            raise CodingError(f"0x{septet:02X} is not a septet", DC_DEFAULT, position)
        accumulator |= septet << bits
        bits += 7
        while bits >= 8:
            out.append(accumulator & 0xFF)
            accumulator >>= 8
            bits -= 8
    if bits:
        out.append(accumulator & 0xFF)
    return bytes(out)


def unpack_septets(data: bytes, count: int | None = None, fill_bits: int = 0) -> bytes:
    """Unpack septets from packed octets, skipping ``fill_bits`` leading bits.

    Give ``count`` (the septet count, TP-UDL minus the header's septets) when it
    is known: when 7 padding bits end the data, counting from the length alone
    yields one spurious trailing ``@`` (septet 0).
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits must be 0-6, not {fill_bits}")
    available = (len(data) * 8 - fill_bits) // 7 if data else 0
    if count is None:
        count = available
    elif count < 0 or count > available:
        raise CodingError(f"{count} septets do not fit in {len(data)} octets", DC_DEFAULT)
    value = int.from_bytes(data, "little") >> fill_bits
    return bytes((value >> (7 * index)) & 0x7F for index in range(count))
