"""Wire protocol shared by the server and the clients (pydantic + stdlib only)."""
