from django.urls import path

from templates_app.apis import (
    TemplateDetailApi,
    TemplateListApi,
    TemplateRenderApi,
    TemplateVersionDetailApi,
    TemplateVersionListApi,
)

urlpatterns = [
    path("templates", TemplateListApi.as_view(), name="templates"),
    path("templates/<str:name>", TemplateDetailApi.as_view(), name="template-detail"),
    path("templates/<str:name>/versions", TemplateVersionListApi.as_view(), name="template-versions"),
    path("templates/<str:name>/versions/<int:version>", TemplateVersionDetailApi.as_view(), name="template-version"),
    path("templates/<str:name>/render", TemplateRenderApi.as_view(), name="template-render"),
]
