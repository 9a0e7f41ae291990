"""The `butterfly` command line: the one place that may start both sides."""
