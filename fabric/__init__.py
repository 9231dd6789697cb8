"""FoA fabric: protocol, MQTT bus, brokers, embeddings, LLM backends, orchestrator and CLI."""

__version__ = "0.1.0"
