"""`foa ui`: a live web console of a running federation (agents, capability map, route playground, jobs).

App layer: it reads the bus at the wire level (the JSON of VCVs, job events and results, route
responses) and serves a FastAPI app with server-sent events; the pages are static files in
`static/`, with no CDN and no build step.
"""

from fabric.ui.app import create_app
from fabric.ui.console import Console

__all__ = ["Console", "create_app"]
