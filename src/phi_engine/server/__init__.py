"""The embedded HTTP server (optional: ``pip install phi_engine[server]``): the product sheet's API
under ``/v1`` over an :class:`~phi_engine.Engine`, with OAuth 2.0 client credentials and JWTs.

``create_app(engine)`` builds the FastAPI app; ``serve(engine)`` (or ``Engine.serve()``, or
``phi-engine serve``) runs it with uvicorn; ``running_server(engine)`` runs it on a background
thread (notebooks, tests, ``phi-engine demo``). To run the app under your own uvicorn, pass
``http=http_protocol()``: the protocol that answers inline inference without the ASGI layer.
"""

from phi_engine.server._app import create_app, serve
from phi_engine.server._background import running_server
from phi_engine.server._protocol import http_protocol

__all__ = ["create_app", "http_protocol", "running_server", "serve"]
