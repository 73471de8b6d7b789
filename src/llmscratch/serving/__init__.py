"""Serving: a run's model behind an OpenAI-compatible HTTP API.

    async_engine.py   the engine in a thread of its own, for asyncio clients
    protocol.py       OpenAI's request bodies, checked; its error shape
    app.py            the FastAPI app: models, completions, chat, health, metrics
"""
