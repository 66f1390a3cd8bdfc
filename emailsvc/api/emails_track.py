"""The `track` field of a send: opt-in open and click tracking (docs/tracking.md)."""

from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

from core.addresses import json_kind, printable


class JsonBooleanField(serializers.BooleanField):
    """true or false, as JSON booleans only ("yes", 1 or "true" are refused)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            raise serializers.ValidationError(f"Must be true or false, not {json_kind(data)}.", code="invalid_field")
        return data


class TrackInputSerializer(serializers.Serializer):
    """Open and click tracking for this email; both off unless asked for. With
    SES its configuration set tracks (SES_TRACKING_CONFIGURATION_SET); with any
    other provider emailsvc adds its own pixel and rewrites the links of the
    HTML part."""

    opens = JsonBooleanField(required=False, default=False, help_text="Add an open pixel to the HTML part")
    clicks = JsonBooleanField(
        required=False, default=False,
        help_text="Send the HTML part's links through a redirect that records the click "
        "(not mailto:, tel:, #anchors, List-Unsubscribe targets or links marked data-emailsvc-notrack)",
    )

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [serializers.ErrorDetail(
                    f'track must be an object like {{"opens": true, "clicks": true}}, not {json_kind(data)}.',
                    code="invalid_field",
                )]}
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {printable(name): [serializers.ErrorDetail("Unknown field: track takes opens and clicks.", code="invalid_field")] for name in unknown}
            )
        return super().to_internal_value(data)


class TrackInputSchema(OpenApiSerializerExtension):
    target_class = TrackInputSerializer

    def map_serializer(self, auto_schema, direction):
        schema = super().map_serializer(auto_schema, direction)
        schema["additionalProperties"] = False
        return schema
