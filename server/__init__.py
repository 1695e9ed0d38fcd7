"""The Durable Streams wake server with a runner registry."""
