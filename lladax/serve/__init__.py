"""The serve wing: `lladax serve`, an OpenAI-compatible HTTP server over the jitted samplers.

Needs the `serve` extra (`uv sync --extra serve`: FastAPI + uvicorn).
"""
