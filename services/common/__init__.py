"""What every service shares: app assembly, problem+json, OpenAPI fragments, settings base,
health, metrics, request context."""
