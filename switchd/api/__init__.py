"""The HTTP API: provisioning REST (Klein), health, metrics and the OpenAPI document."""
