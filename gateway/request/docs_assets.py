"""The OpenAPI pages (``/docs``) with their scripts served by the gateway itself, not from CDNs.

Litestar's render plugins load Redoc and Swagger UI from CDNs (and Google Fonts, and a
favicon from GitHub), so ``/docs`` is a blank page on a machine without internet. The
minified bundles ship in the package under ``gateway/static/docs`` (Redoc 2.5.4 and
swagger-ui-dist 5.18.2 from npm, their licences beside them) and are served at
``/docs/assets``.
"""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

__all__ = ["ASSETS_DIR", "ASSETS_PATH", "assets_router", "render_plugins"]

ASSETS_DIR = Path(__file__).with_name("static") / "docs"
ASSETS_PATH = "/docs/assets"
_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>"


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """Redoc at ``/docs`` (and ``/docs/redoc``), Swagger UI at ``/docs/swagger``, the document as JSON and YAML."""
    return [
        RedocRenderPlugin(
            path=["/", "/redoc"], js_url=f"{ASSETS_PATH}/redoc.standalone.js", google_fonts=False, favicon=_FAVICON
        ),
        SwaggerRenderPlugin(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=_FAVICON,
        ),
        JsonRenderPlugin(),
        YamlRenderPlugin(),
    ]


def assets_router() -> Router:
    """The bundles at ``/docs/assets/<file>``, cacheable for a day (they change only with the package)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS_DIR],
        name="docs-assets",
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400),
        send_as_attachment=False,
    )
