"""Transport between the parties: the server side (`server`: routes, middleware, OpenAPI, running), the clients
(`client`: async and blocking JSON over mutual TLS) and the settings wiring every service shares (`wiring`)."""
