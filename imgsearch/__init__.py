"""Image similarity search: feature engines, feature store, vector index and the web app around them."""
