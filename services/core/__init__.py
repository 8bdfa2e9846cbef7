"""Code shared by every service process: configuration, storage, keys, tokens, logging, servers."""
