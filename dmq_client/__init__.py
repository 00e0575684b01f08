"""dmq_client: the Python SDK of dmq. It depends only on the wire protocol, never on dmq_server."""
