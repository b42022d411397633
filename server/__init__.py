"""The federation server: request socket, session manager, Flower sessions, version store, admin console."""
