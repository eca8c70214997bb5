"""The web dashboard, served by `corral server` at ``/``.

Server-rendered Jinja2 pages with htmx for refreshing parts in place and uPlot for
charts; every script, style and font is served from ``/static`` by Corral itself (no
CDN: clusters are often offline). Pages read the store through the same services as
the API; charts fetch the API's JSON (the session cookie authorizes reads only).
"""
