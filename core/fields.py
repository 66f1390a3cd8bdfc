"""DRF fields and schema pieces the API resources share.

Field errors carry the API's stable codes (see core.errors.CODE_ORDER).
Nothing is coerced: a number where a string is expected is an error.
"""

import re
from datetime import UTC, datetime

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from core.addresses import CONTROL_CHARACTERS, MAX_DISPLAY_NAME, InvalidAddress, address_parse, json_kind, shown

# The same as CONTROL_CHARACTERS, as the pattern the OpenAPI schema states (no
# surrogates: a JSON string with a lone one cannot be encoded as UTF-8 at all).
_NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z"
# A header line holds at most 998 octets (RFC 5322 §2.1.1) and values are folded
# at spaces: a run without spaces cannot be folded, so runs are capped well below that.
MAX_HEADER_WORD = 900
LONG_WORD = re.compile(r"[^ \t]{%d,}" % (MAX_HEADER_WORD + 1))
# Datetimes a caller may give: a day short of datetime's own limits, so that
# windows can be widened to whole hours and days without overflowing.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def rename_field(fields: dict, old: str, new: str) -> dict:
    return {(new if name == old else name): field for name, field in fields.items()}


def _no_control(noun: str) -> RegexValidator:
    return RegexValidator(
        _NO_CONTROL_PATTERN, message=f"{noun} may not contain line breaks or control characters.", code="invalid_field"
    )


class _NoSurrogates(ProhibitSurrogateCharactersValidator):
    """DRF's check and message, with the search done by a regex."""

    _surrogate = re.compile("[\ud800-\udfff]")

    def __call__(self, value):
        found = self._surrogate.search(str(value))
        if found:
            raise serializers.ValidationError(self.message.format(code_point=ord(found.group())), code=self.code)


_NO_SURROGATES = _NoSurrogates()


class TextField(serializers.CharField):
    """A JSON string — a number or boolean is refused, never turned into one.

    `noun` names the value in messages (default: the field's name);
    `single_line` refuses line breaks and control characters and runs of more
    than MAX_HEADER_WORD characters without a space (the value goes into a
    header); `refuse_blank` makes "" an invalid value rather than a missing one.
    """

    def __init__(self, *, noun: str | None = None, single_line: bool = False, refuse_blank: bool = False, **kwargs):
        self.noun = noun
        self.single_line = single_line
        self.refuse_blank = refuse_blank
        if refuse_blank:
            kwargs.setdefault("min_length", 1)  # states it in the schema; run_validation words the error
        super().__init__(**kwargs)
        # DRF's surrogate check walks the string in Python: a regex says the same
        # in C (bodies are kilobytes, and a batch holds 500 of them).
        self.validators = [
            _NO_SURROGATES if isinstance(v, ProhibitSurrogateCharactersValidator) else v for v in self.validators
        ]
        if single_line:
            self.validators.append(_no_control(self.noun or "This value"))

    def bind(self, field_name, parent):
        super().bind(field_name, parent)
        if self.single_line and not self.noun:
            self.validators[-1] = _no_control(field_name)

    @property
    def name_in_errors(self) -> str:
        return self.noun or self.field_name or "This value"

    def run_validation(self, data=serializers.empty):
        blank = isinstance(data, str) and (data == "" or (self.trim_whitespace and not data.strip()))
        if self.refuse_blank and blank:
            # An optional field given as "" is a wrong value, not a missing one.
            raise serializers.ValidationError(f"{self.name_in_errors} may not be blank.", code="invalid_field")
        return super().run_validation(data)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"{self.name_in_errors} must be a string, not {json_kind(data)}.", code="invalid_field"
            )
        value = super().to_internal_value(data)
        if self.single_line and value.isascii():  # non-ASCII values are RFC 2047-encoded, folded anywhere
            long_word = LONG_WORD.search(value)
            if long_word:
                raise serializers.ValidationError(
                    f"{self.name_in_errors} has {len(long_word.group())} characters without a space; at most "
                    f"{MAX_HEADER_WORD} fit on one line of an email header.",
                    code="invalid_field",
                )
        return value


def parse_address(value) -> tuple[str, str]:
    """core.addresses.address_parse for a serializer field: ValidationError (invalid_address)."""
    try:
        return address_parse(value)
    except InvalidAddress as error:
        raise serializers.ValidationError(str(error), code="invalid_address") from None


_ADDRESS_SCHEMA = {
    "oneOf": [
        {
            "type": "string",
            "description": "`jane@example.com` or `Jane Doe <jane@example.com>`. An internationalised domain "
            "is accepted and stored in IDNA (punycode) form; the part before `@` must be ASCII.",
        },
        {
            "type": "object",
            "properties": {
                "email": {"type": "string"},
                "name": {"type": "string", "maxLength": MAX_DISPLAY_NAME},
            },
            "required": ["email"],
        },
    ]
}


class AddressField(serializers.Field):
    """One address: a string (optionally with display name) or {email, name}."""

    def to_internal_value(self, data):
        return parse_address(data)

    def to_representation(self, value):
        return value


class AddressListField(serializers.Field):
    """An address or a list of at most `settings.<max_setting>` addresses; every invalid entry is reported."""

    def __init__(self, *, max_setting: str, **kwargs):
        self.max_setting = max_setting
        super().__init__(**kwargs)

    @property
    def max_items(self) -> int:
        return getattr(settings, self.max_setting)

    def to_internal_value(self, data):
        items = data if isinstance(data, list) else [data]
        if len(items) > self.max_items:
            # Refused before parsing: 10,000 addresses are not worth reading.
            raise serializers.ValidationError(
                f"{len(items)} addresses in {self.field_name}; at most {self.max_items} are allowed.",
                code="too_many_recipients",
            )
        parsed, errors = [], []
        for item in items:
            try:
                parsed.append(parse_address(item))
            except serializers.ValidationError as error:
                errors.extend(error.detail)
        if errors:
            raise serializers.ValidationError(errors)
        return parsed

    def to_representation(self, value):
        return value


class AddressFieldSchema(OpenApiSerializerFieldExtension):
    target_class = AddressField

    def map_serializer_field(self, auto_schema, direction):
        return _ADDRESS_SCHEMA


class AddressListFieldSchema(OpenApiSerializerFieldExtension):
    target_class = AddressListField

    def map_serializer_field(self, auto_schema, direction):
        return {
            "oneOf": [
                _ADDRESS_SCHEMA,
                {"type": "array", "items": _ADDRESS_SCHEMA, "maxItems": self.target.max_items},
            ],
            "description": f"One address or a list of at most {self.target.max_items} ({self.target.max_setting}).",
        }


class MomentField(serializers.DateTimeField):
    """An ISO-8601 date-time (UTC when it names no zone), answered in UTC."""

    def to_internal_value(self, value):
        if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
            raise serializers.ValidationError(f"{self.field_name} may not contain control characters.", code="invalid_field")
        try:
            moment = super().to_internal_value(value).astimezone(UTC)
        except serializers.ValidationError:
            raise serializers.ValidationError(
                f"{self.field_name} {shown(str(value))} is not an ISO-8601 date-time, e.g. 2026-12-01T09:00:00Z.",
                code="invalid_field",
            ) from None
        except (OverflowError, ValueError):
            moment = None
        if moment is None or not _EARLIEST <= moment <= _LATEST:
            raise serializers.ValidationError(f"{self.field_name} is out of range.", code="invalid_field")
        return moment


def filter_text(max_length: int, help_text: str) -> TextField:
    return TextField(required=False, single_line=True, refuse_blank=True, max_length=max_length, help_text=help_text)


def one_value(query, name: str, problems: dict) -> str | None:
    values = query.getlist(name)
    if len(values) > 1:
        problems.setdefault(name, []).append(f"Give {name} once.")
    return values[-1] if values else None


def error_list(errors) -> list:
    """A parameter's messages, however nested (a list's items report by index)."""
    if isinstance(errors, dict):
        return [message for value in errors.values() for message in error_list(value)]
    if isinstance(errors, list):
        return [message for value in errors for message in error_list(value)]
    return [errors]


def cursor_page_serializer(item: type[serializers.Serializer], name: str) -> type[serializers.Serializer]:
    """The shape of one page of a cursor-paginated list of `item` (DRF's CursorPagination)."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "__doc__": f"One page of a cursor-paginated list; follow `next` for more ({item.__name__}).",
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null on the last"),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null on the first"),
            "results": item(many=True),
        },
    )
