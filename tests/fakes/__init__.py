"""Stand-ins for outside services that tests run on loopback."""
