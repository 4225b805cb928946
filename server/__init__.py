"""routegate's gateway: the FastAPI app, its upstream client, metrics, settings and CLI."""
