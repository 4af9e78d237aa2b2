"""The REST API under ``/api/v1`` and the browser's WebSockets: one module per resource."""
