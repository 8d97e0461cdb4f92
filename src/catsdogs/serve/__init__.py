"""HTTP server for a trained run: a web page at ``/`` and a JSON API at ``/api/v1/*``.

See :func:`catsdogs.serve.app.create_app` (the FastAPI app) and
:func:`catsdogs.serve.app.run_server` (``catsdogs serve``).
"""
