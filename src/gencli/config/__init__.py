"""What gencli reads at start: models.json (the registry), settings, serve's settings table, the keys file."""
