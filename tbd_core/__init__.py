"""Floor 0, the shared core: errors, records between stages, tracking, Ray start-up, files, offline assets.

Imports nothing of the project. Every floor above may import it.
"""
