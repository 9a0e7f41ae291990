"""The wire protocol, sans I/O: frames, typed messages and the connection state machine."""
