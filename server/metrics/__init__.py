"""GET /metrics: Prometheus families built from plain rows, and the reads behind them."""
