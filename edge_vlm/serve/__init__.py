"""`edge-vlm serve`: one model behind an OpenAI-compatible HTTP API, with a live view of a running stream.

    edge-vlm serve --bundle B --port 8080
    curl -s localhost:8080/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

Pieces: `errors` (OpenAI's error shape), `images` (data URLs -> checked, decoded pictures), `requests` (the chat
request, validated), `worker` (the one model thread, its bounded queue and the image-prefix cache), `metrics`
(Prometheus), `live` (the stream runner inside the server), `app` (the Starlette routes). Starlette, uvicorn, pydantic
and prometheus-client come with the `serve` extra; nothing here is imported by the rest of the package.
"""
