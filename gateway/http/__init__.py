"""HTTP: the aiohttp application, its routes and middleware, the answers it gives."""
