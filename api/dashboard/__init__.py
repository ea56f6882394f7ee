"""The web dashboard, served by the API process: Overview, Chargeback, Budgets, Sessions.

The pages are static HTML and JavaScript; the browser keeps the API key in sessionStorage
and calls the same JSON endpoints as any client, with `Authorization: Bearer`, so a team
key's restriction applies to every chart, table and download exactly as in the API. The
server never holds a dashboard session of its own. Charts use the plotly.js bundle that
ships inside the `plotly` Python package, served from here: nothing comes from a CDN.
"""

from api.dashboard.routes import router

__all__ = ["router"]
