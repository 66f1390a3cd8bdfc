"""The one canonical form of an email address (SPEC §3, §4).

Every address the service stores or looks up — recipients, from, reply-to,
suppressions, events, the domain allowlists — is in this form, computed by
email-validator: quotes the local part does not need removed (`"jane"@x` and
`"j\\ane"@x` are `jane@x`), the local part lower-cased, the domain
UTS-46-normalised, lower-cased and IDNA-encoded to ASCII A-labels
(`user@bücher.example` → `user@xn--bcher-kva.example`). SES reports events
with the ASCII form, and suppression lookups and de-duplication compare
strings, so one form is what makes them match.

SES (and this service) do not speak SMTPUTF8: an address whose local part is
not ASCII cannot be sent and is refused here.

Imported by config/settings.py, so it depends on nothing that needs settings.
"""

import functools
import re
from email.utils import getaddresses

import email_validator as _email_validator

from core.errors import ValidationFailed

try:  # UTS-46 mapping (IDNA 2008), as browsers and mail clients do.
    import idna as _idna
except ImportError:  # pragma: no cover - idna ships with requests/anymail
    _idna = None

_SHOWN_CHARACTERS = 100
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Characters that break a header line or cannot be stored: C0 and C1 controls
# (CR and LF among them), Unicode line/paragraph separators, lone surrogates.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Lower-case ASCII without quotes, spaces or A-labels: its key is itself, valid or
# not (the form every stored address has), so the hot paths skip the validator.
_ALREADY_KEY = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@[a-z0-9.-]+")
MAX_DISPLAY_NAME = 200


class InvalidAddress(ValidationFailed, ValueError):
    """An address (or domain) that cannot be stored and sent; the message says why."""

    code = "invalid_address"


def printable(value: str) -> str:
    """`value` with any lone surrogate replaced: it can be encoded as UTF-8 (and so answered as JSON)."""
    return _SURROGATE.sub("\ufffd", value)


def shown(value: str) -> str:
    """`value` quoted for an error message: cut short, and printable as UTF-8."""
    text = value if len(value) <= _SHOWN_CHARACTERS else value[:_SHOWN_CHARACTERS] + "…"
    return f"'{printable(text)}'"


def json_kind(value) -> str:
    """What a decoded JSON value is, in the words of JSON (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def domain_canonical(domain: str) -> str:
    """`domain` lower-cased, with IDNA A-labels for its non-ASCII labels.

    Raises InvalidAddress when it is not a valid (internationalised) domain name.
    """
    domain = domain.strip()
    if domain.isascii():
        return domain.lower()
    try:
        if _idna is not None:
            encoded = _idna.encode(domain, uts46=True, transitional=False)
        else:  # pragma: no cover - the stdlib codec: IDNA 2003 with nameprep
            encoded = domain.encode("idna")
    except UnicodeError as error:  # idna.IDNAError is a UnicodeError
        raise InvalidAddress(f"{shown(domain)} is not a valid internationalised domain name ({error}).") from None
    return encoded.decode("ascii").lower()


def address_canonical(value: str) -> str:
    """The canonical form of a bare address (no display name).

    Raises InvalidAddress when it is not a valid address, when its local part
    is not ASCII, or when it is one a transactional service must not send to:
    an IP literal or a domain without a dot (`localhost`) after the '@',
    special-use names (`.local`, `.invalid`, `.onion`, `.arpa`), '%' or '!'
    (source routing through a relay) before it, or a local part that needs
    quotes (spaces, '@', quotes).
    """
    canonical, problem = _canonical(value)
    if problem:
        raise InvalidAddress(problem)
    return canonical


@functools.lru_cache(maxsize=4096)
def _canonical(value: str) -> tuple[str, str]:
    """(the canonical form, "") or ("", why the address is refused)."""
    address = value.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "", f"{shown(value)} is not a valid email address."
    if not local.isascii():
        return "", (
            f"{shown(value)} cannot be sent: the part before '@' must be ASCII "
            "(internationalised local parts, SMTPUTF8, are not supported)."
        )
    if domain.startswith("["):
        return "", f"{shown(value)} cannot be sent: an IP address after '@' is not accepted; give a domain name."
    if domain.isascii() and "." not in domain:
        return "", f"{shown(value)} cannot be sent: the domain after '@' needs a dot (not 'localhost' or a bare name)."
    if "%" in local or "!" in local:
        return "", (
            f"{shown(value)} cannot be sent: '%' and '!' before '@' route mail through another host "
            "and are not accepted."
        )
    try:
        validated = _email_validator.validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=True,
            allow_domain_literal=False,
            allow_display_name=False,
            # Lets `.test` (RFC 2606, for tests and sandboxes) through; the
            # other special-use names (.local, .localhost, .invalid…) are refused.
            test_environment=True,
        )
    except _email_validator.EmailNotValidError as error:
        return "", f"{shown(value)} is not a valid email address: {printable(str(error))}"
    if validated.ascii_local_part.startswith('"'):
        return "", (
            f"{shown(value)} cannot be sent: a part before '@' that needs quotes (spaces, '@', quotes, "
            "backslashes, two dots in a row) is not accepted."
        )
    return f"{validated.ascii_local_part.lower()}@{validated.ascii_domain.lower()}", ""


def _domain_unicode(domain: str) -> str | None:
    """The Unicode form of an A-label domain, or None if it has none."""
    try:
        return _idna.decode(domain) if _idna is not None else domain.encode("ascii").decode("idna")
    except UnicodeError:
        return None


def address_forms(value: str) -> set[str]:
    """Every form a stored row may hold the address in: the canonical one, and —
    for rows stored before there was one canonical form — the address as given
    lower-cased, with its domain in Unicode, and with its local part in quotes."""
    key = address_key(value)
    local, _, domain = key.rpartition("@")
    forms = {key, value.strip().lower()}
    if local and not local.startswith('"'):
        forms.add(f'"{local}"@{domain}')
    if "xn--" in domain and (unicode_domain := _domain_unicode(domain)):
        forms.add(f"{local}@{unicode_domain}")
    return forms


def address_key(value: str) -> str:
    """The canonical form of a valid address — the same for every spelling of
    it; for any other, the same normalisation without the checks. Never raises.

    For addresses that come from elsewhere (provider events, the admin, old
    rows) and for lookups: a suppression must not fail on an odd address, and
    must still match the canonical form whenever the address has one.
    """
    if _ALREADY_KEY.fullmatch(value) and "xn--" not in value:
        return value
    canonical, problem = _canonical(value)
    if not problem:
        return canonical
    local, at, domain = value.strip().rpartition("@")
    if not at:
        return value.strip().lower()
    try:
        domain = domain_canonical(domain)
    except InvalidAddress:
        domain = domain.strip().lower()
    return f"{local.lower()}@{domain}"


def address_parse(value) -> tuple[str, str]:
    """`"Jane <jane@example.com>"`, `"jane@example.com"` or `{"email", "name"}` → (name, address).

    The address comes back in its canonical form (address_canonical), the
    display name stripped. Raises InvalidAddress, its message fit for the
    caller, for anything that cannot be sent.
    """
    if isinstance(value, dict):
        name, address = value.get("name") or "", value.get("email")
        if not isinstance(address, str):
            raise InvalidAddress(f'An address object needs "email" as a string, not {json_kind(address)}.')
        if not isinstance(name, str):
            raise InvalidAddress(f"A display name must be a string, not {json_kind(name)}.")
        if CONTROL_CHARACTERS.search(address):
            raise InvalidAddress("An address may not contain control characters.")
    elif isinstance(value, str):
        if CONTROL_CHARACTERS.search(value):
            raise InvalidAddress("An address may not contain control characters.")
        parsed = getaddresses([value])
        if len(parsed) != 1:
            raise InvalidAddress(f"{shown(value)} is not one email address.")
        name, address = parsed[0]
    else:
        raise InvalidAddress(f'An address must be a string or an object with "email", not {json_kind(value)}.')
    if not address.strip():
        given = value if isinstance(value, str) else address
        raise InvalidAddress(f"{shown(given)} is not a valid email address.")
    address = address_canonical(address)
    if CONTROL_CHARACTERS.search(name):
        raise InvalidAddress("A display name may not contain control characters.")
    if len(name.strip()) > MAX_DISPLAY_NAME:
        raise InvalidAddress(f"A display name may be at most {MAX_DISPLAY_NAME} characters.")
    return name.strip(), address
