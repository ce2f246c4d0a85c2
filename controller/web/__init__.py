"""The dashboard, its event stream and the Prometheus metrics of a running controller."""
