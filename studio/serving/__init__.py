"""`studio serve`: the HTTP service that picks a cached creative per request, logs it, and learns from clicks."""
