"""`sentiment score`: a file of texts scored through the running stack's API, resumably.

`tables` reads CSV, JSONL or plain text and writes the same rows with the answer added;
`checkpoint` keeps the sidecar that makes a run resumable; `client` talks to the server
(limits, retries, per-row errors); `run` ties them together with a progress bar and a summary.
"""
