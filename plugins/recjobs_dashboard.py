"""Airflow 3 plugin: the recjobs dashboard as a page of the Airflow UI.

A small FastAPI app (served by the Airflow API server under /recjobs) renders the
page from the recommendations database; an external view adds it to the UI's
navigation. The page itself is built by ``recjobs.dashboard``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse

URL_PREFIX = "/recjobs"


def _database_url() -> str:
    """The ``recjobs_db`` Airflow connection if defined, else recjobs' own settings."""
    from recjobs.settings import load_settings

    try:
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets("recjobs_db").get_uri()
    except Exception:  # no such connection: the embedded default / RECJOBS_DATABASE_URL
        return load_settings().db_url


def create_app() -> FastAPI:
    app = FastAPI(title="recjobs dashboard")
    state: dict[str, object] = {}

    def engine():  # noqa: ANN202 - created on first request, not at plugin import
        if "engine" not in state:
            from recjobs.db import ensure_schema, make_engine

            eng = make_engine(_database_url())
            ensure_schema(eng)
            state["engine"] = eng
        return state["engine"]

    @app.get("/", response_class=HTMLResponse)
    def page(user: str | None = Query(default=None, max_length=200)) -> str:
        from recjobs.dashboard import render

        return render(engine(), user_id=user or None, base=f"{URL_PREFIX}/")

    @app.get("/api/champion")
    def champion() -> dict:
        from recjobs.dashboard import champion as live_champion

        champ = live_champion(engine())
        return {} if champ is None else champ.__dict__

    return app


class RecjobsDashboardPlugin(AirflowPlugin):
    name = "recjobs_dashboard"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "recjobs dashboard"}]
    external_views = [{
        "name": "Recommendations",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": "recjobs",
    }]
