"""The I/O: the CLI's client (httpx), the server's own HTTP/1.1 client, the address guard, TLS roots."""
