"""The operator console and REST API over HTTP (FastAPI, uvicorn)."""
