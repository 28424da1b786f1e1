"""Protocol-independent heart: events, rate limiting, routing, calls."""
