"""Model parts; see ``agrnet.build`` for how they are assembled."""
