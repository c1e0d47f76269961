"""Airflow 3 plugin: the recjobs dashboard as a page of the Airflow UI.

A small FastAPI app (served by the Airflow API server under /recjobs) renders the
page from the recommendations database; an external view adds it to the UI's
navigation as "Recs" at ``/plugin/recs``. The UI shows the app in an iframe and
appends the iframe's own path to its address, so the page reads
``/plugin/recs/recjobs/?user=...`` (the route and the prefix differ, so no segment
repeats). The page itself is built by ``recjobs.dashboard``; its charts are drawn by
vega-embed, which this app serves itself (``/recjobs/static/vega-embed.js``), since
the browser may have no internet access.

Airflow does not authenticate plugin apps (a mounted app inherits none of the core
API's dependencies), so every route here requires Airflow's own login: the JWT as
a bearer token or the UI's ``_token`` cookie, and the auth manager's permission for
the custom view :data:`RESOURCE_NAME`. The page only reads: the schema is created by
``recjobs initdb``, never by a request.
"""

import logging
import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

URL_PREFIX = "/recjobs"
# The UI's nav label (its sidebar shows about six characters) and its page at /plugin/<route>.
NAV_NAME = "Recs"
NAV_ROUTE = "recs"
DB_CONN_ID = "recjobs_db"
# The custom view name the auth manager is asked about (FAB/Keycloak: grant it per role).
RESOURCE_NAME = "recjobs dashboard"
# Longest id the lookup takes (ids have no length limit; a URL has, about 8 KB in most servers).
MAX_LOOKUP = 4096

log = logging.getLogger(__name__)


class DashboardDatabaseError(RuntimeError):
    """The recommendations database cannot be reached or named; the message has no password."""


def _scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password, wherever it appears, replaced by ``***``."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except ArgumentError:
        return text.replace(url, "<database URL>")
    if not password:
        return text
    # Messages may quote the URL as written (percent-encoded) or the decoded password.
    for form in (quote(str(password), safe=""), quote(str(password)), str(password)):
        text = text.replace(form, "***")
    return text


def database_url() -> tuple[str, str]:
    """The URL and where it came from: the ``recjobs_db`` connection, else recjobs' settings.

    Only a connection that is not defined falls back to the settings; any other failure
    to read it is raised, naming the connection.
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from recjobs.settings import load_settings

    try:
        return Connection.get_connection_from_secrets(DB_CONN_ID).get_uri(), f"Airflow connection {DB_CONN_ID!r}"
    except AirflowNotFoundException:
        return load_settings().db_url, f"RECJOBS_DATABASE_URL / recjobs settings (no connection {DB_CONN_ID!r})"
    except Exception as exc:  # noqa: BLE001 - re-raised, named; `from None`: the cause may hold the URL
        raise DashboardDatabaseError(
            f"cannot read the Airflow connection {DB_CONN_ID!r}: {type(exc).__name__}") from None


class DashboardDatabase:
    """The recommendations database as the page reads it: resolved and opened on first use.

    Every database failure is raised as :class:`DashboardDatabaseError` naming where the
    URL came from and the URL without its password.
    """

    def __init__(self) -> None:
        self._engine: Any = None
        self._url = ""
        self._source = ""
        self._settings: Any = None

    def settings(self) -> Any:  # noqa: ANN401 - recjobs Settings, imported lazily
        """recjobs' settings: where the runs (a user's history) and item features (genres) are."""
        from recjobs.settings import load_settings

        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _error(self, exc: Exception) -> DashboardDatabaseError:
        from recjobs.settings import mask_url

        return DashboardDatabaseError(f"recommendations database {mask_url(self._url)} from {self._source}: "
                                      f"{_scrub(str(exc), self._url)}")

    def engine(self) -> Any:  # noqa: ANN401 - a sqlalchemy Engine, imported lazily
        """The engine, or None while the configured SQLite file does not exist yet (not cached)."""
        from sqlalchemy.exc import SQLAlchemyError

        from recjobs.dashboard import sqlite_file_missing
        from recjobs.db import make_engine
        from recjobs.errors import RecjobsError

        if self._engine is None:
            self._url, self._source = database_url()
            try:
                if sqlite_file_missing(self._url):
                    return None  # connecting would create it: that is `recjobs initdb`'s job
                self._engine = make_engine(self._url)
            except (SQLAlchemyError, ValueError, RecjobsError) as exc:  # a malformed URL: DatabaseError
                raise self._error(exc) from None
        return self._engine

    def page(self, user_id: str | None, item_id: str | None = None, candidates_date: str | None = None) -> str:
        """The dashboard's HTML, or the "run recjobs initdb" page."""
        from sqlalchemy.exc import SQLAlchemyError

        from recjobs.dashboard import render, render_no_schema

        engine = self.engine()
        if engine is None:
            return render_no_schema()
        try:
            return render(engine, user_id=user_id, base=f"{URL_PREFIX}/", settings=self.settings(), item_id=item_id,
                          candidates_date=candidates_date)
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def read(self, what: Any) -> Any:  # noqa: ANN401
        """``what(engine, settings)``, or None without a database or schema; database errors named."""
        from sqlalchemy.exc import SQLAlchemyError

        from recjobs.dashboard import missing_schema

        engine = self.engine()
        if engine is None:
            return None
        try:
            if missing_schema(engine):
                return None
            return what(engine, self.settings())
        except SQLAlchemyError as exc:
            raise self._error(exc) from None

    def champion(self) -> dict[str, Any] | None:
        """The live champion as a dict ({} before a publish); None without a schema."""
        from sqlalchemy.exc import SQLAlchemyError

        from recjobs.dashboard import champion, missing_schema

        engine = self.engine()
        if engine is None:
            return None
        try:
            if missing_schema(engine):
                return None
            champ = champion(engine)
        except SQLAlchemyError as exc:
            raise self._error(exc) from None
        return {} if champ is None else champ.__dict__

    def bundle_cache(self) -> Any:  # noqa: ANN401 - a Path
        """Where the vega bundle is kept between processes: under recjobs' home, which only its user writes."""
        return self.settings().home / "cache"


def warm_up(database: DashboardDatabase) -> None:
    """The first request's one-time work (imports, the vega bundle), in the background; never raises."""
    try:
        from recjobs.dashboard import warm_up as warm

        warm(database.bundle_cache())
    except Exception:  # noqa: BLE001 - a failed warm-up only leaves the work to the first request
        log.exception("recjobs dashboard: warming up failed; the first request does that work")


def create_app() -> FastAPI:
    """The plugin's app: every route behind Airflow's authentication and authorisation."""
    # Imported here, not at module level: other Airflow components load plugins too.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from airflow.api_fastapi.core_api.security import get_user

    # Sync: FastAPI runs it in a thread, since an auth manager may query its database here.
    # (No `from __future__ import annotations` in this module: FastAPI must see these types.)
    def require_dashboard_access(user: Annotated[BaseUser, Depends(get_user)]) -> None:
        # get_user answers 401 without a valid token; the view permission is the auth manager's call.
        if not get_auth_manager().is_authorized_custom_view(method="GET", resource_name=RESOURCE_NAME, user=user):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{user.get_name()!r} may not view {RESOURCE_NAME}")

    database = DashboardDatabase()

    # Airflow's API server enters each plugin app's lifespan when it starts (other components
    # that load plugins do not): the first open of the page then finds the work done.
    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        threading.Thread(target=warm_up, args=(database,), name="recjobs-dashboard-warm-up", daemon=True).start()
        yield

    # No docs/redoc/openapi routes: they would be served outside the app's dependencies.
    app = FastAPI(title="recjobs dashboard", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_dashboard_access)], lifespan=lifespan)

    @app.exception_handler(DashboardDatabaseError)
    async def database_error(_request: Request, exc: DashboardDatabaseError) -> PlainTextResponse:
        return PlainTextResponse(str(exc), status_code=status.HTTP_500_INTERNAL_SERVER_ERROR)

    @app.get("/", response_class=HTMLResponse)
    def page(user: str | None = Query(default=None, max_length=MAX_LOOKUP),
             item: str | None = Query(default=None, max_length=MAX_LOOKUP),
             date: str | None = Query(default=None, max_length=10)) -> str:
        # Ids exactly as typed: spaces are part of an id.
        return database.page(user or None, item or None, date or None)

    @app.get("/api/champion", response_model=None)
    def champion() -> dict | JSONResponse:
        from recjobs.dashboard import NO_SCHEMA

        champ = database.champion()
        if champ is None:
            return JSONResponse({"detail": NO_SCHEMA}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        return champ

    @app.get("/api/charts", response_model=None)
    def charts() -> dict | JSONResponse:
        """The metric charts' Vega-Lite specs, one per metric, with their data inline."""
        from recjobs.dashboard import NO_SCHEMA, failed_nights, metric_chart_specs, metrics_by_date

        specs = database.read(lambda engine, _settings: metric_chart_specs(metrics_by_date(engine),
                                                                            failed_nights(engine)))
        if specs is None:
            return JSONResponse({"detail": NO_SCHEMA}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        return specs

    @app.get("/api/embedding", response_model=None)
    def embedding() -> dict | JSONResponse:
        """The embedding map's points (item_id, title, genre, x, y), or a message why there are none."""
        from recjobs.dashboard import NO_SCHEMA, champion_map

        emap = database.read(champion_map)
        if emap is None:
            return JSONResponse({"detail": NO_SCHEMA}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        return emap.as_json()

    @app.get("/static/vega-embed.js")
    def vega_embed() -> Response:
        """vega + vega-lite + vega-embed, bundled by vl-convert: the page loads nothing from the internet."""
        from recjobs.dashboard import vega_embed_bundle

        return Response(vega_embed_bundle(database.bundle_cache()), media_type="text/javascript",
                        headers={"Cache-Control": "private, max-age=86400"})

    return app


class RecjobsDashboardPlugin(AirflowPlugin):
    name = "recjobs_dashboard"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "recjobs dashboard"}]
    external_views = [{
        "name": NAV_NAME,
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": NAV_ROUTE,
    }]
