"""The request path: dispatch, the dialect table, the inbound request, the steps, streams, errors, OpenAPI."""
