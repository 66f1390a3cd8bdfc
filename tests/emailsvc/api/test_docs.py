"""/api/docs/ (Swagger UI) and /api/redoc/ (ReDoc) work on a machine without
internet: every script, stylesheet and icon they load is a static file of this
service (drf-spectacular-sidecar, served by whitenoise), none comes from a CDN."""

import re
from urllib.parse import urlsplit

import pytest
from django.test import Client

# src="..." / href="..." in the HTML, and the quoted URLs its inline script builds.
ASSET_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|["']([^"'\s]+\.(?:js|css|png|ico|svg))["']""")


def _asset_urls(html: str) -> set[str]:
    return {first or second for first, second in ASSET_URL.findall(html)}


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_page_loads_only_local_static_files(page):
    client = Client()
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()

    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    urls = _asset_urls(html)
    remote = [url for url in urls if urlsplit(url).netloc or url.startswith("//")]
    assert remote == [], f"{page} loads from another host: {remote}"
    static = sorted(url for url in urls if url.startswith("/static/"))
    assert any(url.endswith(".js") for url in static), f"no local script found in {page}: {sorted(urls)}"

    for url in static:
        asset = client.get(url)
        assert asset.status_code == 200, f"{url} (from {page}) answered {asset.status_code}"
        body = b"".join(asset.streaming_content) if asset.streaming else asset.content
        assert body, f"{url} is empty"


def test_swagger_ui_loads_the_schema_from_this_service():
    html = Client().get("/api/docs/").content.decode()
    assert "/api/schema/" in html
    assert Client().get("/api/schema/").status_code == 200
