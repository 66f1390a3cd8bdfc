"""/api/v1/domains: sending domains — add one (its SES identity), the DNS records to
publish, SES's status beside what public DNS answers, check now, remove
(docs/domains.md). `read_only` keys read; `full` keys add, check and remove."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.fields import TextField
from core.responses import ErrorBodySerializer
from emailsvc.api.auth import CanRead, FullAccess
from emailsvc.api.responses import ERRORS
from emailsvc.domains.models import Domain
from emailsvc.domains.selectors import domain_get, domain_missing, domain_record_rows, domains_list
from emailsvc.domains.services import domain_create, domain_delete, domain_verify


class DomainCreateInputSerializer(serializers.Serializer):
    name = TextField(max_length=253, single_line=True, refuse_blank=True, help_text="The domain, e.g. acme.example")
    mail_from_subdomain = TextField(
        required=False, max_length=63, single_line=True, refuse_blank=True,
        help_text="The custom MAIL FROM sub-domain's label (default DOMAIN_MAIL_FROM_SUBDOMAIN, `mail`)",
    )

    def to_internal_value(self, data):
        if isinstance(data, dict) and (unknown := sorted(set(data) - set(self.fields))):
            raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class DnsRecordOutputSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="CNAME, MX or TXT")
    name = serializers.CharField()
    value = serializers.CharField(help_text="What to publish (MX: preference and host)")
    purpose = serializers.ChoiceField(choices=["dkim", "mail_from", "spf", "dmarc"])
    status = serializers.ChoiceField(
        choices=["present", "missing", "wrong_value", "unknown", "unchecked"],
        help_text="What public DNS answered at the last check",
    )
    found = serializers.ListField(child=serializers.CharField(), help_text="The values DNS answered")


class SesStatusOutputSerializer(serializers.Serializer):
    verification_status = serializers.CharField(source="ses_verification_status")
    verified_for_sending = serializers.BooleanField(source="ses_verified_for_sending")
    dkim_status = serializers.CharField()
    mail_from_status = serializers.CharField()
    checked_at = serializers.DateTimeField(source="ses_checked_at", allow_null=True)


class DomainOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.ChoiceField(choices=Domain.Status.values, help_text="verified once SES lets it send")
    mail_from_domain = serializers.CharField()
    records = serializers.SerializerMethodField()
    missing = serializers.SerializerMethodField()
    ses = SesStatusOutputSerializer(source="*")
    dns_checked_at = serializers.DateTimeField(allow_null=True)
    check_error = serializers.CharField(allow_blank=True)
    next_check_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    verified_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(DnsRecordOutputSerializer(many=True))
    def get_records(self, domain: Domain) -> list[dict]:
        return [
            {"type": record.type, "name": record.name, "value": record.value, "purpose": record.purpose,
             "status": seen["status"], "found": seen["found"]}
            for record, seen in domain_record_rows(domain)
        ]

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_missing(self, domain: Domain) -> list[str]:
        """What stands between the domain and sending; empty once verified."""
        return domain_missing(domain)


class DomainListOutputSerializer(serializers.Serializer):
    data = DomainOutputSerializer(many=True)


NOT_FOUND = {404: OpenApiResponse(ErrorBodySerializer, description="domain_not_found")}
SES_FAILED = {
    502: OpenApiResponse(ErrorBodySerializer, description="ses_identity_failed: SES refused or did not answer"),
}


class DomainListApi(APIView):
    def get_permissions(self):
        return [FullAccess() if self.request.method == "POST" else CanRead()]

    @extend_schema(
        operation_id="list_domains",
        responses={200: DomainListOutputSerializer, **ERRORS},
        description="Every sending domain, by name, with its records and status as last checked.",
    )
    def get(self, request):
        return Response(DomainListOutputSerializer({"data": domains_list()}).data)

    @extend_schema(
        operation_id="create_domain",
        request=DomainCreateInputSerializer,
        responses={
            201: DomainOutputSerializer,
            **ERRORS,
            409: OpenApiResponse(
                ErrorBodySerializer,
                description="domain_exists; domains_need_ses (EMAIL_PROVIDER is not ses or sandbox)",
            ),
            **SES_FAILED,
        },
        description=(
            "Add a sending domain: creates its SES identity (Easy DKIM) with a custom MAIL FROM sub-domain "
            "and answers the DNS records to publish — three DKIM CNAMEs, the MAIL FROM MX and SPF TXT, a "
            "DMARC TXT suggestion. Errors: invalid_domain (400)."
        ),
    )
    def post(self, request):
        serializer = DomainCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        domain = domain_create(**serializer.validated_data)
        return Response(DomainOutputSerializer(domain).data, status=status.HTTP_201_CREATED)


class DomainDetailApi(APIView):
    def get_permissions(self):
        return [FullAccess() if self.request.method == "DELETE" else CanRead()]

    @extend_schema(
        operation_id="get_domain",
        responses={200: DomainOutputSerializer, **ERRORS, **NOT_FOUND},
        description="The domain's SES status, each record with what public DNS answered, and what is missing.",
    )
    def get(self, request, name: str):
        return Response(DomainOutputSerializer(domain_get(name=name)).data)

    @extend_schema(
        operation_id="delete_domain",
        request=None,
        responses={
            204: None,
            **ERRORS,
            **NOT_FOUND,
            409: OpenApiResponse(ErrorBodySerializer, description="domain_in_use: emails from it are still to be sent"),
            **SES_FAILED,
        },
        description="Remove the domain and its SES identity; refused while emails from it are queued.",
    )
    def delete(self, request, name: str):
        domain_delete(name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DomainVerifyApi(APIView):
    permission_classes = [FullAccess]

    @extend_schema(
        operation_id="verify_domain",
        request=None,
        responses={200: DomainOutputSerializer, **ERRORS, **NOT_FOUND},
        description="Check now: ask SES for the identity's status and public DNS for each record.",
    )
    def post(self, request, name: str):
        return Response(DomainOutputSerializer(domain_verify(name=name)).data)
