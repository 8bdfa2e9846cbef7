"""The Envoy front door: configuration rendered from one definition for every deployment."""
