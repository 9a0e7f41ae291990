"""The volunteer agent: session with the coordinator, shard worker."""
