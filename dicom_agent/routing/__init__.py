"""④ Routing: YAML rules and the pure engine that picks model tasks and destinations."""
