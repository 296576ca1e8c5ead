"""Build tools and local runner for the sentiment serving stack.

`sentiment.model` builds the model (fine-tune, export, Triton repository);
`sentiment.stack` runs Redis, Triton and the transformer on this machine;
`sentiment.cli` is the one command line over both.
"""
