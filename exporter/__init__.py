"""Activity exporter: usage analytics for Flask apps (Calibre-Web, CWA) as Prometheus metrics."""

__version__ = "0.1.0"
