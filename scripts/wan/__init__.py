"""Wide-area network emulation for benchmarks: namespaces on a bridge, a delaying TCP proxy, scenarios."""
