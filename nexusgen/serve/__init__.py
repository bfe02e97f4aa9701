"""`nexusgen serve`: an OpenAI-compatible HTTP API and a web UI over `NexusGen` (needs `nexusgen[serve]`).

The only package that imports fastapi, uvicorn or a UI. `settings` is light (the command line reads it);
`app.create_app` builds the server, `worker` batches requests onto the model, `routes` holds the model
endpoints, `requests` validates them, `media` handles images in and out. See docs/serving.md.
"""
