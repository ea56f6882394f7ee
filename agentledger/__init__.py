"""agentledger: cost accounting, budget enforcement and chargeback for AI agents."""

__version__ = "0.1.0"
