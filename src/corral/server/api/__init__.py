"""Thin routers: parse, authorize, call a service, return a schema."""
