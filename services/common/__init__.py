"""What every service shares: problem+json, settings base, health, metrics, request context."""
