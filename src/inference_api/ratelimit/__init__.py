"""Request rate limits per API key (client address when anonymous), with slowapi's limiter."""
