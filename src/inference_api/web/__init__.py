"""The web chat page served at `/` and the offline API documentation at `/docs` and `/redoc`."""
