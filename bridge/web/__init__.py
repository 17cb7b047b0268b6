"""The bridge's HTTP server: web console (/), REST API (/api), DICOMweb worklist search
(/dicomweb), /metrics and /healthz. One router per resource; handlers are thin and call
the functions the CLI calls (operations.py, users.py, mapping/dryrun.py, scp/)."""

from bridge.web.app import HttpServer, create_app

__all__ = ["HttpServer", "create_app"]
