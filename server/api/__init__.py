"""The HTTP surface: routes, their dependencies, the request guard, the OpenAPI document and docs pages."""
