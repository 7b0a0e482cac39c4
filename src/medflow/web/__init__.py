"""The web UI: server-rendered pages (Jinja2) and small plain-JS modules over the services."""
