"""REST v1 routers: thin HTTP adapters over ``services.gateway.service``."""
