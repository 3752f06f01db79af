"""HTTP and WebSocket surfaces: one router per surface (health, REST, stream) plus the browser page."""
