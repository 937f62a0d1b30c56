"""The HTTP face of a requester node, built on the embedding API (`p2pinfer.Node`).

- `app`: the Starlette app (OpenAI-compatible `/v1/...`, `/metrics`, the status page) and
  `serve_api`, which serves it on Hypercorn's trio worker inside a nursery.
- `schema`, `chat`, `errors`: request bodies, the chat template, OpenAI-shaped errors.
- `requests`: the one adapter between the API and the node's per-request results.
- `receipt`: signed verification receipts, checkable offline (pure; protocols/receipt.md).
- `metrics`: Prometheus series in a registry per app.

Nothing is imported here, so that `p2pinfer.api.receipt` loads without the web stack (the CLI's
offline `receipt verify`); the server is `p2pinfer.api.app.serve_api`.
"""
