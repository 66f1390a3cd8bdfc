"""Message streams (docs/streams.md): `transactional` (the default) and
`broadcast`, more on request; each with its own configuration set, unsubscribe
policy and share of the send rate. One-click unsubscribe (RFC 8058) scopes a
suppression to the stream it came from."""
